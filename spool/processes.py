"""What each process using a spool says it is doing, kept in the spool for ``inspect``.

The maintenance thread of every process records, every heartbeat, one note named after its host
and pid: where it delivers (masked), its heartbeat, its last delivery and how it went, when it
plans the next one, and when it last said so. A reader keeps the processes that said so within
three heartbeats (at least two minutes) and, on this host, whose pid still runs; the
maintenance thread deletes the notes of the others.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from typing import Any

import orjson

from . import clock
from .storage.counters import note

PREFIX = "process."
FORGET_AFTER = 86400.0


def name() -> str:
    return f"{PREFIX}{socket.gethostname()}.{os.getpid()}"


def record(connection: sqlite3.Connection, status: dict[str, Any]) -> None:
    """Write this process's note (in the caller's transaction), and forget processes gone."""
    now = clock.now()
    note(connection, name(), {**status, "host": socket.gethostname(), "pid": os.getpid(),
                               "seen_at": now})  # fmt: skip
    gone = [found["_name"] for found in _all(connection) if not _alive(found, now, FORGET_AFTER)]
    connection.executemany("DELETE FROM notes WHERE name = ?", [(n,) for n in gone])


def read(connection: sqlite3.Connection, now: float | None = None) -> list[dict[str, Any]]:
    """The processes alive on the spool, by host and pid."""
    now = clock.now() if now is None else now
    found = [p for p in _all(connection) if _alive(p, now)]
    for process in found:
        del process["_name"]
    return sorted(found, key=lambda p: (p.get("host", ""), p.get("pid", 0)))


def _all(connection: sqlite3.Connection) -> list[dict[str, Any]]:
    query = "SELECT name, value FROM notes WHERE name LIKE 'process.%'"
    return [{**orjson.loads(value), "_name": key} for key, value in connection.execute(query)]


def _alive(process: dict[str, Any], now: float, within: float | None = None) -> bool:
    heartbeat = process.get("heartbeat") or 60.0
    horizon = within if within is not None else max(120.0, 3 * float(heartbeat))
    if now - float(process.get("seen_at", 0.0)) > horizon:
        return False
    if process.get("host") == socket.gethostname():
        try:
            os.kill(int(process.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            pass  # another user's process runs there: alive
    return True
