"""Keeping the spool bounded: by age, by size on disk, and by how long delivered rows are kept.

Every row removed before delivery is counted by reason in the spool (``dropped.<reason>``) and
logged; nothing disappears silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sqlite3
import tempfile
import time
from pathlib import Path

from .config import Settings
from .outbox import add
from .schema import DELIVERED, PENDING, REJECTED
from .store import Store, driver, pragma, read_only_engine

log = logging.getLogger("sqreen.spool")

# Size pruning starts a little under the bound, since the WAL grows while it works, and aims
# well under it, so that it does not run again at the next commit. It deletes in chunks, each
# followed by a truncating checkpoint, so the pages it rewrites never pile up in the WAL.
SIZE_TRIGGER = 0.9
SIZE_TARGET = 0.75
SIZE_CHUNK = 1 / 16

_DROP_OLD = "DELETE FROM events WHERE status = :status AND enqueued_at < :before"
_EXPIRE_SETTLED = "DELETE FROM events WHERE status = :status AND settled_at < :before"
_DROP_OLDEST = (
    "DELETE FROM events WHERE seq IN "
    "(SELECT seq FROM events WHERE status = :status ORDER BY seq LIMIT :n)"
)


def prune(store: Store, settings: Settings) -> dict[str, int]:
    """Apply the age and size limits now; return how many pending events were dropped, by reason."""
    now = time.time()
    with store.write() as conn:
        aged = _delete(conn, _DROP_OLD, PENDING, now - settings.max_age)
        add(conn, "dropped.age", aged)
        _delete(conn, _EXPIRE_SETTLED, REJECTED, now - settings.max_age)  # counted when rejected
        _delete(conn, _EXPIRE_SETTLED, DELIVERED, now - settings.keep_delivered)
    return {"age": aged, "size": enforce_size(store, settings.max_bytes)}


def log_drops(dropped: dict[str, int]) -> None:
    for reason, n in dropped.items():
        if n:
            log.warning("sqreen spool: dropped %d undelivered events (%s limit)", n, reason)


def preview(settings: Settings) -> dict[str, int]:
    """What :func:`prune` would drop now, found by pruning a private copy of the spool.

    The same code as the real thing, so the answer cannot drift from it; the spool itself is
    only read (through SQLite's backup API, a consistent snapshot).
    """
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


def enforce_size(store: Store, max_bytes: int) -> int:
    """Drop rows, settled ones first, then the oldest pending, until the file fits.

    Returns how many pending events were dropped. The file itself shrinks: freed pages are
    returned by an incremental vacuum and the WAL is checkpointed and truncated.
    """
    if store.file_bytes() <= max_bytes * SIZE_TRIGGER:
        return 0
    dropped = 0
    target, chunk = int(max_bytes * SIZE_TARGET), max(1, int(max_bytes * SIZE_CHUNK))
    for _ in range(64):
        with store.write() as conn:
            excess = min(chunk, _used_bytes(conn) - target)
            for status in (DELIVERED, REJECTED, PENDING):
                if excess <= 0:
                    break
                freed, deleted = _drop_oldest(conn, status, excess)
                excess -= freed
                if status == PENDING:
                    add(conn, "dropped.size", deleted)
                    dropped += deleted
            _vacuum(conn)
            done = _used_bytes(conn) <= target
        store.checkpoint(truncate=True)
        if done:
            break
    return dropped


def _vacuum(conn: sqlite3.Connection) -> None:
    """Give free pages back to the file system (they leave the file at the next checkpoint)."""
    # Python's sqlite3 steps a statement without result columns once, and each step of this
    # pragma frees one page: run it once per free page.
    for _ in range(pragma(conn, "freelist_count")):
        conn.execute("PRAGMA incremental_vacuum").close()


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = pragma(conn, "page_count") - pragma(conn, "freelist_count")
    return pages * pragma(conn, "page_size")


def _drop_oldest(conn: sqlite3.Connection, status: int, excess: int) -> tuple[int, int]:
    """Delete about ``excess`` bytes of the oldest rows of ``status``: (bytes freed, rows)."""
    rows, total = conn.execute(
        "SELECT count(*), (SELECT count(*) FROM events) FROM events WHERE status = ?", (status,)
    ).fetchone()
    if not rows:
        return 0, 0
    per_row = _used_bytes(conn) / total
    n = min(rows, math.ceil(excess / per_row))
    deleted = conn.execute(_DROP_OLDEST, {"status": status, "n": n}).rowcount
    return int(deleted * per_row), deleted


def _delete(conn: sqlite3.Connection, statement: str, status: int, before: float) -> int:
    return conn.execute(statement, {"status": status, "before": before}).rowcount
