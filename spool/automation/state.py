"""The engine's state in SQLite: the hits in each playbook's windows, its decisions, the repeat
counts, and counters. Kept in the collector's event store (so that every worker shares it and a
restarted collector goes on counting where it left off) or, for a replay, in a private file.

Every function runs on the caller's connection, inside the caller's transaction: the collector
holds SQLite's write lock from the batch's first statement to its commit, so that workers
sharing the file decide once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ..storage.sql import run_script

SCHEMA = """
CREATE TABLE IF NOT EXISTS pb_hits (
    playbook TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL, event_id TEXT NOT NULL,
    value TEXT
);
CREATE INDEX IF NOT EXISTS pb_hits_key ON pb_hits (playbook, key, at);
CREATE INDEX IF NOT EXISTS pb_hits_at ON pb_hits (playbook, at);
CREATE TABLE IF NOT EXISTS pb_decisions (
    id TEXT PRIMARY KEY, playbook TEXT NOT NULL, action TEXT NOT NULL, key TEXT NOT NULL,
    status TEXT NOT NULL, at REAL NOT NULL, crossed_at REAL NOT NULL, expires REAL,
    quiet_until REAL, events TEXT NOT NULL, parameters TEXT NOT NULL, ip TEXT, user TEXT,
    stopped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pb_decisions_key ON pb_decisions (playbook, key);
CREATE INDEX IF NOT EXISTS pb_decisions_ip ON pb_decisions (ip) WHERE ip IS NOT NULL;
CREATE INDEX IF NOT EXISTS pb_decisions_user ON pb_decisions (user) WHERE user IS NOT NULL;
CREATE INDEX IF NOT EXISTS pb_decisions_at ON pb_decisions (at);
CREATE TABLE IF NOT EXISTS pb_repeats (
    playbook TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (playbook, key)
);
CREATE TABLE IF NOT EXISTS pb_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# The statuses of a decision; a blocking one stops the later events of its IP or user.
ISSUED, DRY_RUN, LATE, CRITICAL, NOTIFIED = "issued", "dry_run", "late", "critical", "notified"
STOPPING = (ISSUED, DRY_RUN)

_LIVE = "(expires IS NULL OR expires > :at)"


def create(connection: sqlite3.Connection) -> None:
    """Create the tables where they are missing."""
    run_script(connection, SCHEMA)


def stopping(connection: sqlite3.Connection, since: float) -> list[tuple[Any, ...]]:
    """The decisions that stop events (of an IP or a user) at ``since`` or later: id, ip,
    user, from, until."""
    return connection.execute(
        f"SELECT id, ip, user, at, expires FROM pb_decisions WHERE status IN {STOPPING} "
        f"AND {_LIVE}",
        {"at": since},
    ).fetchall()


def count_stopped(connection: sqlite3.Connection, stopped: dict[str, int]) -> None:
    connection.executemany(
        "UPDATE pb_decisions SET stopped = stopped + ? WHERE id = ?",
        [(n, decision_id) for decision_id, n in stopped.items()],
    )


def quiet(connection: sqlite3.Connection, since: float) -> list[tuple[Any, ...]]:
    """The keys with a decision in force at ``since`` or later: playbook, key, until."""
    return connection.execute(
        "SELECT playbook, key, quiet_until FROM pb_decisions "
        "WHERE quiet_until IS NULL OR quiet_until > ?",
        (since,),
    ).fetchall()


def hit(
    connection: sqlite3.Connection, playbook: str, key: str, at: float, event_id: str,
    value: str | None,
) -> None:  # fmt: skip
    connection.execute(
        "INSERT INTO pb_hits (playbook, key, at, event_id, value) VALUES (?, ?, ?, ?, ?)",
        (playbook, key, at, event_id, value),
    )


def hits_around(
    connection: sqlite3.Connection, playbook: str, key: str, at: float, within: float,
    threshold: int,
) -> list[tuple[float, str, str | None]]:  # fmt: skip
    """The key's hits of every window of ``within`` that holds ``at``, in time order; none
    when there are fewer than ``threshold`` (counted first: far cheaper than reading them)."""
    if threshold > 1:
        count = connection.execute(
            "SELECT count(*) FROM pb_hits WHERE playbook = ? AND key = ? AND at > ? AND at < ?",
            (playbook, key, at - within, at + within),
        ).fetchone()[0]
        if count < threshold:
            return []
    return connection.execute(
        "SELECT at, event_id, value FROM pb_hits WHERE playbook = ? AND key = ? "
        "AND at > ? AND at < ? ORDER BY at",
        (playbook, key, at - within, at + within),
    ).fetchall()


def clear(connection: sqlite3.Connection, playbook: str, key: str, until: float | None) -> None:
    """Forget a key's hits (up to ``until``, when given): a decision or a reset."""
    if until is None:
        connection.execute("DELETE FROM pb_hits WHERE playbook = ? AND key = ?", (playbook, key))
    else:
        connection.execute(
            "DELETE FROM pb_hits WHERE playbook = ? AND key = ? AND at <= ?",
            (playbook, key, until),
        )


def repeated(connection: sqlite3.Connection, playbook: str, key: str) -> int:
    """Count one more decision for this key; how many it has had, this one included."""
    connection.execute(
        "INSERT INTO pb_repeats (playbook, key, count) VALUES (?, ?, 1) "
        "ON CONFLICT (playbook, key) DO UPDATE SET count = count + 1",
        (playbook, key),
    )
    row = connection.execute(
        "SELECT count FROM pb_repeats WHERE playbook = ? AND key = ?", (playbook, key)
    ).fetchone()
    return int(row[0])


def decide(connection: sqlite3.Connection, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    connection.execute(
        f"INSERT INTO pb_decisions ({columns}) VALUES ({', '.join(':' + c for c in row)})", row
    )


def expire(connection: sqlite3.Connection, horizons: Iterable[tuple[str, float]], cap: int) -> int:
    """Drop the hits older than each playbook's horizon, then the oldest past ``cap`` per
    playbook; how many the cap evicted (counted as ``evicted``)."""
    evicted = 0
    for playbook, horizon in horizons:
        connection.execute("DELETE FROM pb_hits WHERE playbook = ? AND at < ?", (playbook, horizon))
        excess = (
            connection.execute(
                "SELECT count(*) FROM pb_hits WHERE playbook = ?", (playbook,)
            ).fetchone()[0]
            - cap
        )
        if excess > 0:
            connection.execute(
                "DELETE FROM pb_hits WHERE rowid IN (SELECT rowid FROM pb_hits "
                "WHERE playbook = ? ORDER BY at LIMIT ?)",
                (playbook, excess),
            )
            evicted += excess
    if evicted:
        add(connection, "evicted", evicted)
    return int(evicted)


def add(connection: sqlite3.Connection, name: str, n: int) -> None:
    connection.execute(
        "INSERT INTO pb_counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


def counters(connection: sqlite3.Connection) -> dict[str, int]:
    return {name: int(v) for name, v in connection.execute("SELECT name, value FROM pb_counters")}


def live(connection: sqlite3.Connection, now: float) -> Sequence[tuple[Any, ...]]:
    """The issued decisions in force at ``now``, the most recent first."""
    return connection.execute(
        "SELECT id, action, parameters, expires, at FROM pb_decisions "
        f"WHERE status = '{ISSUED}' AND at <= :at AND {_LIVE} ORDER BY at DESC",
        {"at": now},
    ).fetchall()


def decisions(connection: sqlite3.Connection, since: float = 0.0) -> list[dict[str, Any]]:
    """Every decision taken at ``since`` or later, in the order taken, as column: value."""
    cursor = connection.execute(
        "SELECT * FROM pb_decisions WHERE at >= ? ORDER BY at, rowid", (since,)
    )
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor]
