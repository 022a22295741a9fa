"""Keeping the spool bounded: by age, by size on disk, and by how long delivered rows are kept.

Every row removed before delivery is counted by reason in the spool (``dropped.<reason>``) and
logged; nothing disappears silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

from .. import clock
from ..config import Settings
from .bound import enforce_size
from .counters import SECURITY_DROPPED, add
from .files import read_only_engine
from .schema import DELIVERED, PENDING, REJECTED
from .sql import driver, scalar
from .store import Store

_DROP_OLD = "DELETE FROM events WHERE status = :status AND enqueued_at < :before"
# The security events among them, through their partial index (migration 0006_security).
_OLD_SECURITY = (
    f"SELECT count(*) FROM events WHERE security = 1 AND status = {PENDING} AND enqueued_at < ?"
)
_EXPIRE_SETTLED = "DELETE FROM events WHERE status = :status AND settled_at < :before"


def prune(store: Store, settings: Settings) -> dict[str, int]:
    """Apply the age and size limits now; return how many pending events were dropped, by reason.

    One call is enough, however far over ``max_bytes`` the spool is."""
    aged = drop_old(store, settings)
    store.checkpoint()
    return {"age": aged, "size": enforce_size(store, settings.max_bytes)}


def drop_old(store: Store, settings: Settings) -> int:
    """Apply the age limits: drop pending events older than ``max_age`` (returning how many),
    delete settled ones past their keeping time."""
    now = clock.now()
    with store.write() as conn:
        add(conn, f"{SECURITY_DROPPED}age", scalar(conn, _OLD_SECURITY, now - settings.max_age))
        aged = _delete(conn, _DROP_OLD, PENDING, now - settings.max_age)
        add(conn, "dropped.age", aged)
        _delete(conn, _EXPIRE_SETTLED, REJECTED, now - settings.max_age)  # counted when rejected
        _delete(conn, _EXPIRE_SETTLED, DELIVERED, now - settings.keep_delivered)
    return aged


def preview(settings: Settings) -> dict[str, int]:
    """What :func:`prune` would drop now, found by pruning a private copy of the spool.

    The same code as the real thing, so the answer cannot drift from it; the spool itself is
    only read (through SQLite's backup API, a consistent snapshot).
    """
    import tempfile  # the CLI's dry run only: not on import sqreen's path

    with tempfile.TemporaryDirectory(prefix="sqreen-prune-") as directory:
        copy = Path(directory) / settings.path.name
        source = read_only_engine(settings.path, settings.lock_timeout)
        try:
            with source.connect() as conn, contextlib.closing(sqlite3.connect(copy)) as target:
                driver(conn).backup(target)
        finally:
            source.dispose()
        store = Store(dataclasses.replace(settings, path=copy))
        try:
            return prune(store, store.settings)
        finally:
            store.close()


def _delete(conn: sqlite3.Connection, statement: str, status: int, before: float) -> int:
    return conn.execute(statement, {"status": status, "before": before}).rowcount
