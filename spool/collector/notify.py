"""Notifications: a POST per decision to each of its playbook's ``notify`` URLs.

Queued in the event store in the transaction that took the decision, so that a restart loses
none; sent by a background thread (:class:`Notifier`), never on the way of a collector's
answer. Each send is retried a few times at once (tenacity), then again later with a growing
delay; one that keeps failing for :data:`GIVE_UP_AFTER` attempts is dropped and counted. A
worker claims what it sends for :data:`CLAIM` seconds, so that two workers do not both send it.

The body is Sqreen's documented security-response payload: ``sqreen_payload_type``,
``date_created``, ``properties`` (``ips`` or ``user_identifiers``), ``playbook`` (its name), and
the ``decision`` as replay prints it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson

from .. import clock
from ..automation import state
from ..automation.engine import Decision
from ..wire import iso
from .store import EventStore

log = logging.getLogger("sqreen.collector")

CLAIM = 60.0
GIVE_UP_AFTER = 12  # about a day and a half of attempts, with the delays below
MAX_DELAY = 4 * 3600.0
TIMEOUT = 10.0
EVERY = 1.0
PRUNE_EVERY = 10.0


def payload(decision: Decision, now: float) -> bytes:
    """The body posted for a decision."""
    parameters = decision.parameters
    properties: dict[str, Any] = {}
    if "ip_cidr" in parameters:
        properties["ips"] = [{"ip_cidr": ip} for ip in parameters["ip_cidr"]]
    if "users" in parameters:
        properties["user_identifiers"] = list(parameters["users"])
    return orjson.dumps(
        {
            "sqreen_payload_type": "security_response",
            "date_created": iso(now),
            "properties": properties,
            "playbook": {"name": decision.playbook, "id": decision.playbook},
            "decision": decision.to_json(),
        }
    )


def enqueue(
    connection: sqlite3.Connection, decisions: Iterable[tuple[Decision, tuple[str, ...]]],
    now: float,
) -> int:  # fmt: skip
    """Queue a notification per decision and URL, in the caller's transaction."""
    rows = [(url, payload(d, now), now) for d, urls in decisions for url in urls]
    connection.executemany("INSERT INTO notifications (url, body, next_at) VALUES (?, ?, ?)", rows)
    return len(rows)


class Notifier:
    """The collector's background thread: it sends what is queued in one store, and keeps the
    store within its bounds (every :data:`PRUNE_EVERY` seconds)."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def wake(self, prune: bool = False) -> None:
        """Run a round now (``prune``: the store is near its size bound; prune in it too)."""
        if prune:
            self._pruned_at = 0.0
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        import httpx  # the collector's own dependency: imported by its thread, not by sqreen

        with httpx.Client(timeout=TIMEOUT, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    self.send_due(client)
                    if time.monotonic() - self._pruned_at >= PRUNE_EVERY:
                        self._pruned_at = time.monotonic()
                        self._store.prune(clock.now())
                except (sqlite3.Error, OSError) as exc:  # the next round tries again
                    log.warning("collector: the event store failed (%s)", exc)
                self._wake.wait(EVERY)
                self._wake.clear()

    def send_due(self, client: Any) -> int:
        """Send what is due now; how many were delivered."""
        now = clock.now()
        with self._store.transaction() as connection:
            due = connection.execute(
                "SELECT seq, url, body, attempts FROM notifications WHERE next_at <= ? "
                "ORDER BY seq LIMIT 50",
                (now,),
            ).fetchall()
            connection.executemany(
                "UPDATE notifications SET next_at = ? WHERE seq = ?",
                [(now + CLAIM, row[0]) for row in due],
            )
        delivered = 0
        for seq, url, body, attempts in due:
            if self._stop.is_set():
                break
            error = _post(client, url, body)
            with self._store.transaction() as connection:
                self._settle(connection, seq, url, attempts, error)
            delivered += error is None
        return delivered

    def _settle(
        self, connection: sqlite3.Connection, seq: int, url: str, attempts: int,
        error: str | None,
    ) -> None:  # fmt: skip
        if error is None:
            connection.execute("DELETE FROM notifications WHERE seq = ?", (seq,))
            state.add(connection, "notify.sent", 1)
            return
        attempts += 1
        host = urlsplit(url).hostname  # never the whole URL: webhooks carry secrets in paths
        if attempts >= GIVE_UP_AFTER:
            connection.execute("DELETE FROM notifications WHERE seq = ?", (seq,))
            state.add(connection, "notify.dropped", 1)
            log.error("notification to %s dropped after %d attempts: %s", host, attempts, error)
            return
        delay = min(MAX_DELAY, 5.0 * 2**attempts)
        connection.execute(
            "UPDATE notifications SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
            (attempts, clock.now() + delay, error, seq),
        )
        log.warning("notification to %s failed (%s); again in %.0f s", host, error, delay)


def _post(client: Any, url: str, body: bytes) -> str | None:
    """POST one notification, retried a few times at once; None when delivered, else why."""
    import httpx
    from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

    def once() -> str | None:
        try:
            answer = client.post(url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if answer.is_success else f"HTTP {answer.status_code}"

    retrying = Retrying(
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.2, max=2),
        retry=retry_if_result(lambda error: error is not None),
        retry_error_callback=lambda attempt: attempt.outcome.result() if attempt.outcome else "",
    )
    result: str | None = retrying(once)
    return result
