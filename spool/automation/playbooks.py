"""A playbook file: TOML, one ``[[playbook]]`` table each, read and checked in full.

Every mistake is one line naming the playbook and the key (:class:`Problems`), so that
``sqreen-spool playbook check`` shows them all at once. The ranges a playbook never blocks are
the file's ``critical_ips``, and loopback, link-local and the private ranges unless the file
says ``allow_private = true``.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import parse_duration
from ..security.actions import IP_ACTIONS, USER_ACTIONS, Malformed, check_url
from .conditions import Condition, Dimension, Invalid, condition, dimension, network

ACTIONS = (*IP_ACTIONS, *USER_ACTIONS, "none")
# Private, loopback, link-local and the other special ranges: a load balancer, the office.
PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "::1/128", "::/128", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip
MAX_THRESHOLD = 1_000_000
_FILE_KEYS = {"critical_ips", "allow_private", "playbook"}
_KEYS = {
    "name", "description", "event", "where", "group_by", "distinct", "threshold", "within",
    "action", "duration", "url", "notify", "reset_on", "repeat", "dry_run",
}  # fmt: skip


@dataclass(frozen=True)
class Reset:
    """``reset_on``: an event (and conditions) that clears a key's count."""

    events: frozenset[str]
    where: tuple[Condition, ...] = ()

    def matches(self, event: Mapping[str, Any]) -> bool:
        return event.get("name") in self.events and all(c.holds(event) for c in self.where)


@dataclass(frozen=True)
class Playbook:
    """One ``[[playbook]]`` table, checked."""

    name: str
    events: frozenset[str]
    threshold: int
    within: float
    action: str
    group_by: tuple[Dimension, ...]
    where: tuple[Condition, ...] = ()
    distinct: Dimension | None = None
    duration: float | None = None  # None: until removed (``duration = 0``)
    url: str | None = None
    notify: tuple[str, ...] = ()
    reset_on: Reset | None = None
    repeat: float = 1.0
    dry_run: bool = False
    description: str = ""

    def selects(self, event: Mapping[str, Any]) -> bool:
        return event.get("name") in self.events and all(c.holds(event) for c in self.where)

    @property
    def blocks(self) -> bool:
        return self.action != "none"


@dataclass(frozen=True)
class Playbooks:
    """A whole file: its playbooks and the ranges they never block."""

    playbooks: tuple[Playbook, ...] = ()
    critical: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = PRIVATE
    by_event: Mapping[str, tuple[Playbook, ...]] = field(default_factory=dict, compare=False)

    def critical_ip(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in n for n in self.critical if n.version == address.version)

    @property
    def watched(self) -> list[str]:
        """The event names the playbooks count (their ``reset_on`` too): the collector's
        answer tells the applications to deliver them early."""
        names = set(self.by_event)
        for playbook in self.playbooks:
            if playbook.reset_on is not None:
                names |= playbook.reset_on.events
        return sorted(names)


class Problems(ValueError):
    """A playbook file with mistakes: ``lines`` holds one line per mistake."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load(path: Path) -> Playbooks:
    """The playbooks of a file; Problems listing every mistake."""
    return read(document(path))


def document(path: Path) -> dict[str, Any]:
    """A playbook file decoded (not checked yet); Problems when it cannot be read as TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise Problems([f"{path}: {getattr(exc, 'strerror', None) or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise Problems([f"{path}: not TOML: {exc}"]) from None


def parse(text: str) -> Playbooks:
    """The playbooks of a TOML document; Problems listing every mistake."""
    try:
        decoded = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Problems([f"not TOML: {exc}"]) from None
    return read(decoded)


def read(document: Mapping[str, Any]) -> Playbooks:
    """The playbooks of a decoded file; Problems listing every mistake."""
    problems: list[str] = [f"{key}: unknown key" for key in document if key not in _FILE_KEYS]
    critical = _critical(document, problems)
    tables = document.get("playbook", [])
    if not isinstance(tables, list):
        problems.append("playbook: write each one as a [[playbook]] table")
        tables = []
    playbooks: list[Playbook] = []
    for index, table in enumerate(tables):
        label = f"playbook {index + 1}"
        if isinstance(table, dict) and isinstance(table.get("name"), str) and table["name"]:
            label = f"playbook {table['name']!r}"
        found = _playbook(table, label, problems)
        if found is None:
            continue
        if any(p.name == found.name for p in playbooks):
            problems.append(f"{label}: name: another playbook has this name")
        playbooks.append(found)
    if problems:
        raise Problems(problems)
    by_event: dict[str, list[Playbook]] = {}
    for playbook in playbooks:
        for name in playbook.events:
            by_event.setdefault(name, []).append(playbook)
    return Playbooks(
        tuple(playbooks), critical, {name: tuple(found) for name, found in by_event.items()}
    )


def _critical(document: Mapping[str, Any], problems: list[str]) -> tuple[Any, ...]:
    allow = document.get("allow_private", False)
    if not isinstance(allow, bool):
        problems.append("allow_private: must be true or false")
        allow = False
    ranges = document.get("critical_ips", [])
    if not isinstance(ranges, list):
        problems.append("critical_ips: must be a list of ranges")
        ranges = []
    found: list[Any] = [] if allow else list(PRIVATE)
    for text in ranges:
        try:
            found.append(network(text, "critical_ips"))
        except Invalid as exc:
            problems.append(str(exc))
    return tuple(found)


def _playbook(table: object, label: str, problems: list[str]) -> Playbook | None:
    if not isinstance(table, dict):
        problems.append(f"{label}: must be a table")
        return None
    before = len(problems)

    def wrong(key: str, why: str) -> None:
        problems.append(f"{label}: {key}: {why}")

    for key in table:
        if key not in _KEYS:
            wrong(key, "unknown key")
    values: dict[str, Any] = {}
    for key, reader in _READERS.items():
        if key in table:
            try:
                values[key] = reader(table[key])
            except (Invalid, Malformed, ValueError, TypeError) as exc:
                wrong(key, str(exc))
        elif key in _REQUIRED:
            wrong(key, "required")
    where = table.get("where", {})
    values["where"] = _where(where, "where", wrong)
    if "reset_on" in table:
        values["reset_on"] = _reset(table["reset_on"], wrong)
    _check_action(values, table, wrong)
    if len(problems) > before:
        return None
    values.setdefault("group_by", (dimension("ip"),))
    return Playbook(**{_FIELDS.get(key, key): value for key, value in values.items()})


def _where(where: object, key: str, wrong: Any) -> tuple[Condition, ...]:
    if not isinstance(where, dict):
        wrong(key, "must be a table of dimension = condition")
        return ()
    found = []
    for path, spec in where.items():
        try:
            found.append(condition(path, spec))
        except Invalid as exc:
            wrong(f"{key}.{path}", str(exc))
    return tuple(found)


def _reset(spec: object, wrong: Any) -> Reset | None:
    if not isinstance(spec, dict) or "event" not in spec:
        wrong("reset_on", "must be a table with an event (and an optional where)")
        return None
    for key in spec:
        if key not in ("event", "where"):
            wrong(f"reset_on.{key}", "unknown key")
    try:
        events = _events(spec["event"])
    except ValueError as exc:
        wrong("reset_on.event", str(exc))
        return None
    return Reset(events, _where(spec.get("where", {}), "reset_on.where", wrong))


def _check_action(values: dict[str, Any], table: Mapping[str, Any], wrong: Any) -> None:
    """What the action needs: a redirect its url; an IP action keys on ``ip``, a user action
    on ``user`` (a block lands on what was counted, never on a bystander)."""
    action = values.get("action")
    group_by = [d.path for d in values.get("group_by", (dimension("ip"),))]
    if action in IP_ACTIONS and "ip" not in group_by:
        wrong("group_by", f"{action} needs 'ip' among the dimensions it groups by")
    if action in USER_ACTIONS and "user" not in group_by:
        wrong("group_by", f"{action} needs 'user' among the dimensions it groups by")
    redirect = isinstance(action, str) and action.startswith("redirect_")
    if redirect and "url" not in values and "url" not in table:
        wrong("url", f"{action} needs a url")
    if not redirect and "url" in table:
        wrong("url", "only a redirect takes a url")
    if action not in (None, "none") and "duration" not in table:
        wrong("duration", "required for an action (0: until removed)")


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError("must be a non-empty string of at most 200 characters")
    return value


def _events(value: object) -> frozenset[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError("an event name, or a list of them")
    return frozenset(names)


def _group_by(value: object) -> tuple[Dimension, ...]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths:
        raise ValueError("a dimension, or a list of them")
    return tuple(dimension(p) for p in paths)


def _threshold(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_THRESHOLD:
        raise ValueError(f"an integer from 1 to {MAX_THRESHOLD}")
    return value


def _within(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("a window must be longer than 0")
    return seconds


def _action(value: object) -> str:
    if value not in ACTIONS:
        raise ValueError(f"one of {', '.join(ACTIONS)}")
    return str(value)


def _duration(value: object) -> float | None:
    return parse_duration(value) or None


def _notify(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of http(s) URLs")
    return tuple(check_url(url, "a notify URL") for url in value)


def _repeat(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 100:
        raise ValueError("a factor from 1 to 100")
    return float(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


_READERS: dict[str, Any] = {
    "name": _name,
    "description": _text,
    "event": _events,
    "group_by": _group_by,
    "distinct": dimension,
    "threshold": _threshold,
    "within": _within,
    "action": _action,
    "duration": _duration,
    "url": lambda value: check_url(value, "the redirect"),
    "notify": _notify,
    "repeat": _repeat,
    "dry_run": _flag,
}
_REQUIRED = {"name", "event", "threshold", "within", "action"}
# The readers' keys as the dataclass names them.
_FIELDS = {"event": "events"}
