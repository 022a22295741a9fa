"""Security responses in the spool: the collector's list and an operator's actions, the event
names its playbooks watch (``urgent``: delivered early), and the version counter that tells
every process sharing the spool to reload the actions.

Writes are one ``BEGIN IMMEDIATE`` transaction each through :meth:`Store.write`; reads take a
plain sqlite3 connection (see :mod:`sqreen.security.enforcer`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import replace

import orjson

from .. import clock
from ..config import MAX_SECONDS
from ..storage.counters import add, note
from ..storage.store import Store
from .actions import Action, Malformed, check_scope, read_action

VERSION = "actions.version"
COLLECTOR = "collector"
OPERATOR = "operator"
URGENT = "urgent"

_COLUMNS = "source, action_id, action, parameters, send_response, expires_at, received_at"
_INSERT = f"INSERT OR REPLACE INTO actions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_SELECT = f"SELECT {_COLUMNS} FROM actions ORDER BY received_at, action_id"
_SELECT_SOURCE = f"SELECT {_COLUMNS} FROM actions WHERE source = ?"
_READ_VERSION = "SELECT value FROM counters WHERE name = ?"


def read_actions(
    documents: Iterable[object],
    now: float,
    warn: Callable[[str, str], None],
    source: str,
    widest: tuple[int, int],
) -> list[Action]:
    """The valid actions of a list in the agent's format; each other one is skipped with a
    warning (``action_unknown`` or ``action_malformed``), never stopping the rest. A range
    wider than ``widest`` or covering loopback is malformed (see
    :func:`sqreen.security.actions.check_scope`)."""
    found: list[Action] = []
    for document in documents:
        try:
            action = read_action(document, now, source)
            check_scope(action, widest)
            found.append(action)
        except Malformed as exc:
            kind = "action_unknown" if str(exc).startswith("unknown action") else "action_malformed"
            warn(kind, f"security response skipped: {exc}")
    return found


def replace_collector_actions(store: Store, actions: Iterable[Action], now: float) -> bool:
    """Make ``actions`` the collector's whole list (an empty one clears it); return whether it
    changed. An action already held keeps its expiry and when it was received: its duration
    counts from when it was first received. An unchanged list writes nothing and leaves the
    version alone, so that no process reloads it (a collector repeats its list in every
    answer)."""
    with store.write() as conn:
        held = {
            action_id: (expires_at, received_at)
            for action_id, expires_at, received_at in conn.execute(
                "SELECT action_id, expires_at, received_at FROM actions WHERE source = ?",
                (COLLECTOR,),
            )
        }
        rows = [_row(a, *held.get(a.action_id, (a.expires_at, now))) for a in actions]
        before = conn.execute(f"{_SELECT_SOURCE} ORDER BY action_id", (COLLECTOR,)).fetchall()
        if sorted(rows, key=lambda row: str(row[1])) == before:
            return False
        conn.execute("DELETE FROM actions WHERE source = ?", (COLLECTOR,))
        conn.executemany(_INSERT, rows)
        add(conn, VERSION, 1)
        return True


def replace_urgent(store: Store, names: list[str]) -> None:
    """Keep ``names``, the event names the collector's playbooks watch, for the processes
    that start before the collector's next answer."""
    with store.write() as conn:
        note(conn, URGENT, {"names": names})


def load_urgent(store: Store) -> frozenset[str]:
    """The event names kept by :func:`replace_urgent` (none before a collector said)."""
    with store.reading() as conn:
        row = conn.execute("SELECT value FROM notes WHERE name = ?", (URGENT,)).fetchone()
    if row is None:
        return frozenset()
    names = orjson.loads(row[0]).get("names", [])
    return frozenset(n for n in names if isinstance(n, str))


def add_operator_action(store: Store, action: Action, now: float) -> None:
    with store.write() as conn:
        conn.execute(_INSERT, _row(action, action.expires_at, now))
        add(conn, VERSION, 1)


def remove_action(store: Store, action_id: str) -> int:
    """Remove an action of either source; return how many rows went. A collector's action
    comes back with its next answer that still lists it."""
    with store.write() as conn:
        removed = conn.execute("DELETE FROM actions WHERE action_id = ?", (action_id,)).rowcount
        add(conn, VERSION, 1)
    return int(removed)


def clear_actions(store: Store) -> int:
    with store.write() as conn:
        removed = conn.execute("DELETE FROM actions").rowcount
        add(conn, VERSION, 1)
    return int(removed)


def load_actions(conn: sqlite3.Connection) -> list[Action]:
    """Every stored action (expired ones included: callers check ``live``)."""
    found, now = [], clock.now()
    for row in conn.execute(_SELECT):
        source, action_id, name, parameters, send_response, expires_at, received_at = row
        if expires_at is not None and received_at > now:
            # Received "in the future": the wall clock stepped back since. The action lasts at
            # most its whole duration from now, not that plus the step.
            expires_at = now + (expires_at - received_at)
        if expires_at is not None:  # stored by an older version, unbounded: as if read now
            expires_at = min(expires_at, received_at + MAX_SECONDS)
        document = {
            "action": name,
            "action_id": action_id,
            "parameters": orjson.loads(parameters),
            "send_response": bool(send_response),
        }
        try:
            action = read_action(document, 0.0, source)
        except Malformed:  # written by a newer sqreen-spool, say: not this one's to enforce
            continue
        found.append(replace(action, expires_at=expires_at))
    return found


def actions_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(_READ_VERSION, (VERSION,)).fetchone()
    return int(row[0]) if row else 0


def _row(action: Action, expires_at: float | None, received_at: float) -> tuple[object, ...]:
    return (
        action.source,
        action.action_id,
        action.action,
        orjson.dumps(action.parameters()).decode(),
        int(action.send_response),
        expires_at,
        received_at,
    )
