"""The size bound: the spool's database file plus its WAL stay under ``max_bytes`` (with a
fixed slack), at every moment and whatever the collector does.

Three parts keep it, none of which waits for the network:

- the maintenance thread (see :mod:`sqreen.spooler`) checkpoints the WAL and, once the data
  reaches :data:`SIZE_TRIGGER` of the bound, drops the oldest rows down to :data:`SIZE_TARGET`;
- the inserting caller itself does the same (:meth:`Bound.relieve`) when it finds the files at
  the bound, which only happens when a burst outruns the maintenance thread;
- ``sqreen-spool prune`` and the heartbeat's prune bring a spool that is any amount over the
  bound under it in one call (an old spool, a lowered bound), in bounded memory.

Every pending row removed is counted as ``dropped.size``, and a security event's also as
``security_dropped.size``: analytics go first, security events only when nothing else is left
(see :mod:`sqreen.priority`).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time

from ..health import Health
from .counters import SECURITY_DROPPED, add
from .failures import record_failure, storage_errors
from .files import WAL, size_of
from .schema import DELIVERED, PENDING, REJECTED
from .sql import pragma
from .store import Store

log = logging.getLogger("sqreen.spool")

# What the invariant allows above the bound: SQLite writes whole pages, and the writers of other
# processes may each commit once between two looks at the files.
BOUND_SLACK = 256 * 1024
BOUND_FACTOR = 1.1
# The data (pages in use) is cut back once it reaches SIZE_TRIGGER of the bound, to SIZE_TARGET:
# the rest of the bound is the WAL's (at most 2/16 of it, see Store) and the margin for what the
# writers add while a cut is under way.
SIZE_TRIGGER = 0.7
SIZE_TARGET = 0.55
# Rows are deleted and pages vacuumed in steps of this share of the bound, each its own short
# transaction, so that neither memory nor the WAL grows with how far over the bound a spool is.
SIZE_CHUNK = 1 / 16
# The database file is shrunk (its free pages given back) only when it is larger than this share
# of the bound: below it, free pages are simply reused by the next inserts, which is far cheaper
# than moving pages during a burst.
FILE_SHARE = 0.9
# After a relief that could not empty the WAL (a reader or checkpoint of another process in the
# way), inserts try again after a pause that doubles with each failure in a row, up to
# RELIEF_RETRY: a passing reader costs little, one that stays (holding a snapshot) is not
# waited for at every commit.
# How often (in commits, at most) the bound looks at the files' sizes after a commit: two stat
# calls. Nearer the bound it looks more often, down to every commit (see Bound.watch).
WAL_CHECK_EVERY = 16
# Past this many times its limit, the WAL is the inserting caller's to checkpoint: the
# maintenance thread could not keep up with the burst.
WAL_BRAKE = 2
# What one commit adds to the files, assumed until measured: a few 2 KiB pages and their headers.
COMMIT_BYTES = 8192
RELIEF_FIRST_RETRY = 0.001
RELIEF_RETRY = 0.5
# A failed relief is not tried again for at least this many times as long as it took.
RELIEF_SHARE = 9


def ceiling(max_bytes: int) -> int:
    """The most the spool's two files may ever hold together on disk."""
    return int(max_bytes * BOUND_FACTOR) + BOUND_SLACK


class Bound:
    """Keeps one store under its bound: from the maintenance thread (:meth:`keep`), and from
    the inserting caller when a burst outruns it (:meth:`watch`, after each commit)."""

    def __init__(self, store: Store, max_bytes: int, health: Health) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._health = health
        self._retry_at, self._failures = -math.inf, 0
        self._look_at = WAL_CHECK_EVERY
        self._looked = (0, 0)  # (commits, bytes on disk) at the last look
        self._growth = float(COMMIT_BYTES)

    def watch(self, inserted: int) -> bool:
        """After the store's ``inserted``-th commit: keep the bound under a burst that the
        maintenance thread cannot keep up with; True when the files were at the bound (the
        maintenance thread is due too).

        Checkpoints and cuts run beside the inserts, and a burst (several threads, several
        processes) can outrun them. So inserts look at the files' sizes: at the bound (see
        :meth:`headroom`), the caller does the maintenance itself (:meth:`relieve`) before
        adding more. The nearer the files are to the bound, measured in what a commit of any
        writer has been seen to add to them, the sooner the next look: down to every commit.
        """
        if inserted < self._look_at:
            return False  # the usual case: one comparison per commit
        room, total = self.headroom()
        commits, before = self._looked
        if total > before and inserted > commits:  # other processes' writes count too
            self._growth = max((total - before) / (inserted - commits), self._growth * 0.9)
        full = room <= 0
        if full:
            self.relieve()
            room, total = self.headroom()
        self._looked = (inserted, total)
        # Past its limit the WAL is in the catch-up's hands, which other processes may outrun:
        # each of them then looks at every commit, so that all stop within a commit of the bound.
        ahead = int(room / (2 * max(self._growth, COMMIT_BYTES / 2)))
        if room < (WAL_BRAKE - 1) * self.store.wal_limit:
            ahead = 1
        self._look_at = inserted + max(1, min(WAL_CHECK_EVERY, ahead))
        return full

    def headroom(self) -> tuple[int, int]:
        """How many bytes the files may still grow before the bound needs relief (none once
        they reach ``max_bytes``, or the WAL WAL_BRAKE times its limit), and their size."""
        path = self.store.path
        wal = size_of(f"{path}{WAL}")
        total = size_of(str(path)) + wal
        return min(self.max_bytes - total, WAL_BRAKE * self.store.wal_limit - wal), total

    def keep(self, wait: float = 0.0) -> bool:
        """Checkpoint, then enforce the bound; False when a reader of another process kept the
        checkpoint from copying the whole WAL.

        One thread and process at a time on the host (the store's checkpointer lock): with no
        ``wait`` it is skipped when another one is at it (the maintenance thread's routine);
        with one, it waits for the other (a relief), then does nothing if that relieved the
        spool, else empties the WAL at once (holding writers off) before the cut.
        """
        with self.store.checkpointer.held(wait) as held:
            if not held or (wait and self.headroom()[0] > 0):
                return held
            complete = self.store.checkpoint(now=wait > 0)
            dropped = enforce_size(self.store, self.max_bytes)
        log_drops({"size": dropped})
        return complete

    def relieve(self) -> None:
        """For an insert that found the files at the bound: cut them back now, in this thread,
        rather than add to them (the inserts of other processes at the bound wait for it). A
        failure is counted; the insert goes on."""
        began = time.monotonic()
        if began < self._retry_at:
            return
        try:
            if self.keep(wait=self.store.settings.lock_timeout):
                self._failures = 0
                return
        except storage_errors() as exc:
            record_failure(self._health, exc, "size bound")
        self._failures += 1
        # Counted from the attempt's end, and at least RELIEF_SHARE times as long as it took:
        # an attempt that waited out the lock timeout (a lock held by a stopped process) is not
        # repeated at once, and relief never takes more than a small share of the callers' time.
        ended = time.monotonic()
        pause = min(RELIEF_RETRY, RELIEF_FIRST_RETRY * 2**self._failures)
        self._retry_at = ended + max(pause, RELIEF_SHARE * (ended - began))


def log_drops(dropped: dict[str, int]) -> None:
    """Log the pending events that a limit dropped, by reason (nothing when none was)."""
    for reason, n in dropped.items():
        if n:
            log.warning("sqreen spool: dropped %d undelivered events (%s limit)", n, reason)


def enforce_size(store: Store, max_bytes: int) -> int:
    """Drop rows, settled ones first, then the oldest pending analytics, then the oldest
    pending security events, until the data fits in :data:`SIZE_TARGET` of the bound; give
    free pages back when the file itself is too large.

    Returns how many pending events were dropped. Works in steps of :data:`SIZE_CHUNK` of the
    bound, each its own transaction followed by a checkpoint, whatever the excess. Looking
    costs two stats, and one read once the files reach :data:`SIZE_TRIGGER`: the data is cut
    once the pages in use reach it.
    """
    largest = int(max_bytes * FILE_SHARE)
    if store.file_bytes() < max_bytes * SIZE_TRIGGER:
        return 0  # the pages in use, and all the pages, take less than the files: two stats
    with store.reading() as reading:
        used, pages = _used_bytes(reading)
    if used < max_bytes * SIZE_TRIGGER and pages <= largest:
        return 0
    target, step = int(max_bytes * SIZE_TARGET), max(1, int(max_bytes * SIZE_CHUNK))
    dropped = 0
    while used > target:
        with store.write() as conn:
            excess, deleted = min(step, used - target), 0
            for kind in _DROP_ORDER:
                rows = _drop_oldest(conn, kind, excess)
                if rows:
                    deleted = rows
                    if kind in (_ANALYTICS, _SECURITY):
                        add(conn, "dropped.size", rows)
                        dropped += rows
                    if kind == _SECURITY:
                        add(conn, f"{SECURITY_DROPPED}size", rows)
                    break  # measure what was freed before going on
            used, pages = _used_bytes(conn)
        store.checkpoint()  # a freed page is overwritten (SQLite's secure delete): a WAL frame
        if not deleted:
            break  # nothing left to drop (the rest is the schema's own pages)
    while pages > largest:
        with store.write() as conn:
            free = pragma(conn, "freelist_count")
            if free:
                _vacuum(conn, min(free, max(1, step // pragma(conn, "page_size"))))
            _, pages = _used_bytes(conn)
        store.checkpoint(truncate=True)  # the file shrinks as the WAL is copied into it
        if not free:
            break
    return dropped


def _vacuum(conn: sqlite3.Connection, pages: int) -> None:
    """Give ``pages`` free pages back to the file system (they leave the file at the next
    checkpoint)."""
    # Python's sqlite3 steps a statement without result columns once, and each step of this
    # pragma frees one page: run it once per page.
    for _ in range(pages):
        conn.execute("PRAGMA incremental_vacuum").close()


def _used_bytes(conn: sqlite3.Connection) -> tuple[int, int]:
    """The bytes of the database's pages in use, and of all its pages."""
    page_size, pages = pragma(conn, "page_size"), pragma(conn, "page_count")
    return (pages - pragma(conn, "freelist_count")) * page_size, pages * page_size


# The kinds of rows the cut takes, in its order: the settled, then the pending analytics, then
# the pending security events. Each with the query of its oldest rows and their sizes, and the
# deletion of those up to the last one taken. Pending analytics are most of the table, in seq
# order (a few security rows skipped on the way); the others are found through their partial
# indexes (migrations 0004_settled, 0006_security).
_ROWS = "SELECT seq, length(payload) FROM events WHERE {} ORDER BY seq LIMIT :n"
_DROP_THROUGH = "DELETE FROM events WHERE {} AND seq <= :last"
_DELIVERED_ROWS = f"status = {DELIVERED} AND status > 0"
_REJECTED_ROWS = f"status = {REJECTED} AND status > 0"
_ANALYTICS = f"status = {PENDING} AND security = 0"
_SECURITY = f"security = 1 AND status = {PENDING}"
_DROP_ORDER = (_DELIVERED_ROWS, _REJECTED_ROWS, _ANALYTICS, _SECURITY)
# The least room a row takes, so that a chunk fetches a bounded number of rows.
ROW_BYTES = 64


def _drop_oldest(conn: sqlite3.Connection, kind: str, excess: int) -> int:
    """Delete the oldest rows of a ``kind`` (of :data:`_DROP_ORDER`) that free at most about
    ``excess`` bytes; return how many.

    A row takes more room in its pages than its bytes, by up to about twice for rows of half a
    page: taking rows whose bytes add up to half the excess never frees more than was asked
    (the caller measures what was freed and asks again)."""
    budget, last, rows = excess // 2, None, 0
    cursor = conn.execute(_ROWS.format(kind), {"n": excess // ROW_BYTES + 1})
    for seq, size in cursor:
        last, rows, budget = seq, rows + 1, budget - size
        if budget <= 0:
            break
    cursor.close()
    if last is None:
        return 0
    return int(conn.execute(_DROP_THROUGH.format(kind), {"last": last}).rowcount)
