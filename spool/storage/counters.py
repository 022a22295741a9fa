"""Counts and small notes kept in the spool itself, so that every process and the CLI see
the same: ``dropped.<reason>`` (pending events a limit removed), ``security_dropped.<reason>``
(the security events among them), ``reported.<reason>`` (drops the collector was told of), the
delivery thread's failures, and notes such as the last delivery attempt. Written inside the
caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from ..wire import DROP_REASONS

SECURITY_DROPPED = "security_dropped."

_ADD = (
    "INSERT INTO counters (name, value) VALUES (:name, :n) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_NOTE = (
    "INSERT INTO notes (name, value) VALUES (:name, :value) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


def add(raw: sqlite3.Connection, name: str, n: int) -> None:
    """Add ``n`` to a counter, inside the caller's transaction."""
    if n:
        raw.execute(_ADD, {"name": name, "n": n})


def note(raw: sqlite3.Connection, name: str, document: Mapping[str, Any]) -> None:
    """Record a small JSON document (such as the last delivery attempt), in the caller's
    transaction."""
    raw.execute(_NOTE, {"name": name, "value": orjson.dumps(document).decode()})


def unreported_drops(raw: sqlite3.Connection) -> dict[str, int]:
    """Drops counted in the spool but not yet received by the collector, by reason."""
    return unreported(dict(raw.execute("SELECT name, value FROM counters").fetchall()))


def dropped(values: Mapping[str, int]) -> dict[str, int]:
    """The pending events dropped, by reason (every reason, zeros too), from the counters."""
    return {reason: int(values.get(f"dropped.{reason}", 0)) for reason in DROP_REASONS}


def dropped_security(values: Mapping[str, int]) -> dict[str, int]:
    """The security events among the drops, by reason (every reason, zeros too)."""
    return {reason: int(values.get(f"{SECURITY_DROPPED}{reason}", 0)) for reason in DROP_REASONS}


def failures(values: Mapping[str, int]) -> dict[str, int]:
    """The failures saved by every process, by kind, from the counters."""
    return {
        name.removeprefix("failed."): int(n)
        for name, n in sorted(values.items())
        if name.startswith("failed.")
    }


def unreported(values: Mapping[str, int]) -> dict[str, int]:
    """The drops not yet reported, by reason, from the spool's counters."""
    owed = {
        reason: values.get(f"dropped.{reason}", 0) - values.get(f"reported.{reason}", 0)
        for reason in DROP_REASONS
    }
    return {reason: n for reason, n in owed.items() if n > 0}
