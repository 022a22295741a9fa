"""A small playbook for the reference collector, to try the security-response loop end to end:
after N failed logins (``sqreen.auth_track`` with ``success`` false) for the same user within a
window, block that user for a while; the same per client IP. Not a security product.

The failure windows are kept in memory (per collector process); the actions it decided are
kept in a JSON file, so that a restarted collector keeps answering with them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sqreen.security.actions import user_key


@dataclass(frozen=True)
class Rules:
    block_after: int | None  # failed logins of one user
    block_ip_after: int | None  # failed logins from one client IP
    window: float
    block_for: float | None  # None: until removed


class Playbook:
    """Watches the events a collector accepts; decides block actions; lists the live ones."""

    def __init__(self, rules: Rules, path: Path | None = None) -> None:
        self.rules = rules
        self._path = path
        self._lock = threading.Lock()
        self._failures: dict[object, deque[float]] = {}
        # action_id -> (the action in the agent's format, less its duration; its expiry)
        self._decided: dict[str, tuple[dict[str, Any], float | None]] = {}
        self._blocked: set[object] = set()  # keys of users and IPs with a live action
        if path is not None and path.exists():
            try:
                for item in orjson.loads(path.read_bytes()):
                    action, expires = item["action"], item["expires_at"]
                    _key(action)  # the shape the playbook writes
                    self._decided[action["action_id"]] = (action, expires)
            except (orjson.JSONDecodeError, TypeError, KeyError, IndexError) as exc:
                raise ValueError(
                    f"{path} is not the playbook's list of actions ({type(exc).__name__}): "
                    "move it aside to start with none"
                ) from None
            self._blocked = {_key(action) for action, _ in self._decided.values()}

    def answer(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Observe the events a batch brought; the complete list of live actions, for the
        batch's answer."""
        now = time.time()
        for event in events:
            self.observe(event, now)
        return self.actions(now)

    def observe(self, event: Mapping[str, Any], now: float) -> None:
        """Count a failed login; past a threshold, decide a block."""
        properties = event.get("properties") or {}
        if event.get("name") != "sqreen.auth_track" or properties.get("success") is not False:
            return
        rules = self.rules
        with self._lock:
            self._expire(now)
            identifiers = event.get("user_identifiers")
            if rules.block_after and isinstance(identifiers, dict) and identifiers:
                key: object = ("user", user_key(identifiers))
                if self._count(key, now) >= rules.block_after and key not in self._blocked:
                    self._decide(key, "block_user", {"users": [identifiers]}, now)
            ip = (event.get("request") or {}).get("ip")
            if rules.block_ip_after and isinstance(ip, str) and ip:
                key = ("ip", ip)
                if self._count(key, now) >= rules.block_ip_after and key not in self._blocked:
                    self._decide(key, "block_ip", {"ip_cidr": [ip]}, now)

    def actions(self, now: float) -> list[dict[str, Any]]:
        """The live actions, each with the seconds it has left as its duration."""
        with self._lock:
            self._expire(now)
            return [
                {**action, "duration": None if expires is None else max(0.0, expires - now)}
                for action, expires in self._decided.values()
            ]

    def _count(self, key: object, now: float) -> int:
        seen = self._failures.setdefault(key, deque())
        seen.append(now)
        while seen and seen[0] <= now - self.rules.window:
            seen.popleft()
        return len(seen)

    def _decide(self, key: object, name: str, parameters: dict[str, Any], now: float) -> None:
        action_id = f"pb-{uuid.uuid4().hex[:12]}"
        action = {"action": name, "action_id": action_id, "parameters": parameters}
        expires = None if self.rules.block_for is None else now + self.rules.block_for
        self._decided[action_id] = (action, expires)
        self._blocked.add(key)
        self._failures.pop(key, None)
        self._save()

    def _expire(self, now: float) -> None:
        gone = [
            i for i, (_, expires) in self._decided.items() if expires is not None and expires <= now
        ]
        for action_id in gone:
            del self._decided[action_id]
        if gone:
            self._blocked = {_key(action) for action, _ in self._decided.values()}
            self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        document = [{"action": a, "expires_at": e} for a, e in self._decided.values()]
        partial = self._path.with_name(self._path.name + ".tmp")
        partial.write_bytes(orjson.dumps(document))
        os.replace(partial, self._path)
        with contextlib.suppress(OSError):
            os.chmod(self._path, 0o600)


def _key(action: Mapping[str, Any]) -> object:
    parameters = action["parameters"]
    if action["action"] == "block_user":
        return ("user", user_key(parameters["users"][0]))
    return ("ip", parameters["ip_cidr"][0])
