"""The spool file's writer and readers: the hot-path insert and group commits, write
transactions, reads and migration, and a replaced file started afresh.

Every statement goes through this module, on the driver's own connections (see
:mod:`.connections`): Core's statement machinery would cost more than the insert itself, and
importing it more than opening the spool. SQLAlchemy owns the schema's tables and the
migrations. Checkpoints are :mod:`.checkpoints`', opening the file :mod:`.opening`'s.

Transactions are explicit: connections run in the driver's autocommit mode (a lone statement is
its own transaction) and :meth:`Store.write` issues ``BEGIN IMMEDIATE``, so a writer takes
SQLite's write lock up front and polls it itself (:meth:`Store._execute`) instead of failing on
a read-to-write upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import clock
from ..config import Settings
from ..event import Event
from . import schema
from .checkpoints import Checkpoints
from .connections import Connections
from .counters import add
from .failures import CORRUPT_CODES, SQLITE_BUSY, sqlite_code
from .files import LOCK, TURN, file_bytes
from .group import Group
from .locks import FileLock, Turn
from .opening import stored_revision
from .packing import BUILT_HEAD, Packer, id_key
from .revision import read_revision
from .sql import scalar

log = logging.getLogger("sqreen.spool")

# Told the count of this process's commits after each one; answers whether maintenance is due.
AfterCommit = Callable[[int], bool]


def _nothing_due(inserted: int) -> bool:
    return False


# Checkpoint (passively, from the worker thread) after this many commits. Auto-checkpointing is
# off on every connection: SQLite's own would run inside whichever track() call crossed the
# threshold and cost it milliseconds.
CHECKPOINT_EVERY = 1000
# A passive checkpoint never blocks writers, but under a sustained burst it never catches up
# either, and the WAL only starts over once fully copied. Past this size the worker catches up
# (Store._catch_up) and copies the rest while briefly holding writers off. Each start-over costs
# the next insert milliseconds (disk flushes to wait for), about once per 1,600 commits at 4 MiB
# (a commit adds about 2.5 KiB); a larger WAL would make them rarer but takes its room from the
# database under max_bytes. The file is then reused, not truncated, so later commits overwrite
# allocated blocks instead of growing the file again.
WAL_RESTART_BYTES = 16 * 1024 * 1024
# The writer polls a write lock that another connection holds this often at most (_execute).
BUSY_POLL = 0.0002

_PENDING_ROWS = (
    "SELECT seq, id, payload, packing, enqueued_at, name, security FROM events "
    f"WHERE status = {schema.PENDING}"
)
_INSERT = (
    "INSERT INTO events (enqueued_at, name, security, id, payload, packing) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


class Store:
    """One spool file, opened lazily, safe across threads and ``fork()``."""

    def __init__(self, settings: Settings, after_commit: AfterCommit = _nothing_due) -> None:
        self.settings = settings
        self.path = settings.path
        self.checkpointer = FileLock(Path(f"{self.path}{LOCK}"))
        # Every write transaction of every process on the host takes it first, under the gate
        # (see .locks.Turn): writers then queue without SQLite's sleeping busy handler.
        self.turn = Turn(Path(f"{self.path}{TURN}"))
        # Under a size bound smaller than the defaults assume, the WAL must stay a fraction of it.
        self.wal_limit = min(WAL_RESTART_BYTES, settings.max_bytes // 16)

        self.checkpoint_every = max(16, min(CHECKPOINT_EVERY, self.wal_limit // 8192))
        # Commits by this process (counting on across fork(): the thresholds that the hook's
        # owners compare it with stay meaningful), and the one hook told of each.
        self.inserted = 0
        self.after_commit = after_commit
        self.checkpoints = Checkpoints(self)
        # Payloads are packed under the writer's lock (see .packing): the compressor serves one
        # thread at a time.
        self.packer = Packer()
        self._grouped = settings.durability == "power"
        self._group = Group()
        self.connections = Connections(
            settings, self.wal_limit, self.turn, self._group.reset, self._opened
        )

    # -- hot path -------------------------------------------------------------------------------

    def insert(self, event: Event) -> bool:
        """Commit one event; return what ``after_commit`` says (whether maintenance is due).
        Raises on storage failure.

        In ``power`` mode, calls that meet a commit in flight share the next one (see
        :mod:`sqreen.storage.group`): each commit waits for the disk, which costs far more than
        the queue. A lone caller's commit is its own, through the same queue. The hook runs
        after the writer is free again: what it does (the bound's relief) may take a while.
        """
        if self._grouped:
            self._group.insert(event, self._commit_many, self.settings.lock_timeout)
            return self.after_commit(self.inserted)
        connections, turn = self.connections, self.turn
        lock = connections.lock
        connections.acquire(lock)  # by hand: a context manager would cost 2 µs of this call
        try:
            raw = connections.writer()
            turn.take(self.settings.lock_timeout)
            try:
                # Packed here rather than through Packer.pack: build() made the event, so its
                # payload begins with its id (BUILT_HEAD bytes), and the call costs less.
                current = self.packer.current
                payload, packing = event.payload, None
                if current is not None:
                    packing, compressor = current
                    payload = compressor.compress(memoryview(payload)[BUILT_HEAD:])
                key = bytes.fromhex(event.id.replace("-", ""))
                row = (clock.now(), event.name, event.security, key, payload, packing)
                self._execute(raw, _INSERT, row)
            except sqlite3.DatabaseError as exc:
                if sqlite_code(exc) in CORRUPT_CODES:
                    connections.close_locked()  # the next call reopens, and quarantines the file
                raise
            finally:
                turn.give()
            self.inserted += 1
            inserted = self.inserted
        finally:
            lock.release()
        return self.after_commit(inserted)

    def _commit_many(self, take: Callable[[], Sequence[Event]], shared: bool) -> None:
        """One transaction for a group's events: the hot path's, shared. By hand, as
        insert() is: context managers would cost a lone caller a tenth of its call."""
        connections, turn = self.connections, self.turn
        lock = connections.lock
        connections.acquire(lock)
        try:
            raw = connections.writer()
            turn.take(self.settings.lock_timeout)
            try:
                self._execute(raw, "BEGIN IMMEDIATE")
                if shared:
                    # The threads that the previous commit just released are about to queue
                    # their next events: one switch lets them join this commit, not the next.
                    time.sleep(0)
                now = clock.now()
                events = take()
                raw.executemany(_INSERT, self._rows(events, now))
                raw.execute("COMMIT")
            except BaseException as exc:
                if raw.in_transaction:  # SQLite may have rolled back already (disk full)
                    raw.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and sqlite_code(exc) in CORRUPT_CODES:
                    connections.close_locked()  # the next call reopens, quarantines the file
                raise
            finally:
                turn.give()
            self.inserted += len(events)
        finally:
            lock.release()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``) on the writer's own sqlite3 connection.

        Every write but the hot-path insert goes through here. Plain sqlite3: statements that
        move a thousand rows pay for no pool checkout and no SQLAlchemy result rows."""
        with self.gate():
            raw = self.connections.writer()
            with self.writers_turn():
                self._execute(raw, "BEGIN IMMEDIATE")
                try:
                    yield raw
                except BaseException:
                    if raw.in_transaction:  # SQLite may have rolled back already (disk full)
                        raw.execute("ROLLBACK")
                    raise
                raw.execute("COMMIT")

    def _execute(self, raw: sqlite3.Connection, sql: str, parameters: Sequence[Any] = ()) -> None:
        """One statement on the writer's connection, run again while SQLite's write lock is
        taken, polling every 200 µs at most, within the lock timeout.

        The writer's connection has no busy timeout: SQLite's busy handler sleeps 1, 2, 5,
        10... ms whether or not the lock was freed meanwhile, and a writer that keeps finding
        it taken sleeps ever longer while the other one commits on. With the writers' turn,
        this happens only against a writer that does not take part (the sqlite3 shell), or a
        process that has not yet seen this one arrive (sqreen.storage.locks.Turn).
        """
        try:
            raw.execute(sql, parameters)
            return
        except sqlite3.OperationalError as exc:
            if sqlite_code(exc) != SQLITE_BUSY:
                raise
        deadline = time.monotonic() + self.settings.lock_timeout
        wait = 0.0
        while True:
            time.sleep(wait)
            try:
                raw.execute(sql, parameters)
                return
            except sqlite3.OperationalError as exc:
                if sqlite_code(exc) != SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            wait = min(wait * 2 or BUSY_POLL / 8, BUSY_POLL)

    def insert_many(self, events: Sequence[Event]) -> None:
        """Commit many events in one transaction (imports): one commit, not one per event."""
        with self.write() as conn:
            conn.executemany(_INSERT, self._rows(events, clock.now()))
        self.inserted += len(events)

    def _rows(self, events: Sequence[Event], now: float) -> list[tuple[Any, ...]]:
        """The rows of events entering the spool at ``now``, for a caller holding the gate."""
        pack = self.packer.pack
        return [(now, e.name, e.security, id_key(e.id), *pack(e.id, e.payload)) for e in events]

    # -- everything else ------------------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The reader's connection (each statement its own snapshot), the spool opened first if
        needed; held by this thread until the block ends."""
        with self.side():
            yield self.connections.reader()

    def open(self) -> None:
        """Open the spool now (made, migrated or moved aside as needed), not at its first use,
        and prepare the hot path's statement (an insert rolled back): the first ``track()``
        then costs what the others do."""
        with self.gate():
            raw = self.connections.writer()
            with self.writers_turn():
                self._execute(raw, "BEGIN IMMEDIATE")
                try:
                    raw.execute(_INSERT, (0.0, "", False, "", b"", None))
                finally:
                    raw.execute("ROLLBACK")

    def migrate(self) -> tuple[str | None, str | None]:
        """Apply pending migrations now; return the schema revisions before and after."""
        before = stored_revision(self.path, self.settings, self.wal_limit)
        return before, self.revision()

    def checkpoint(self, truncate: bool = False, now: bool = False) -> bool:
        """Copy the WAL into the database file; see :meth:`.checkpoints.Checkpoints.run`."""
        return self.checkpoints.run(truncate, now)

    def bulk_committed(self) -> None:
        """Count one bulk transaction (an import's, a delivery's); see
        :meth:`.checkpoints.Checkpoints.bulk_committed`."""
        self.checkpoints.bulk_committed()

    def file_bytes(self) -> int:
        """The spool's size on disk: database file and WAL."""
        return file_bytes(self.path)

    def count_pending(self) -> int:
        """How many events wait for delivery."""
        with self.reading() as conn:
            return int(scalar(conn, "SELECT count(*) FROM events WHERE status = ?", schema.PENDING))

    def revision(self) -> str | None:
        """The schema revision stored in the spool (opening it if needed)."""
        with self.reading() as conn:
            return read_revision(conn)

    def reopen_if_replaced(self) -> int | None:
        """If the spool's path no longer names the file this process has open (deleted by a
        cleanup job, or replaced), start a fresh spool there and carry this process's view of
        the pending events over to it; return how many, or None when the file is still there.

        The old file stays readable through the open connection, so the events that went
        into it after it was deleted are not lost. One stat: for the maintenance thread.
        """
        connections = self.connections
        if not connections.replaced():
            return None
        wait = self.settings.lock_timeout
        with self.checkpointer.held(wait), self.side(), self.gate():
            if not connections.replaced():
                return None  # another thread (maintenance, an explicit call) just did it
            # As sent: the fresh spool has no dictionary yet (it is repacked once it has one).
            old = connections.writer()
            pending = old.execute(_PENDING_ROWS).fetchall()
            readable, unreadable = self.packer.unpack_rows(old, (row[:4] for row in pending))
            rest = {row[0]: row[4:] for row in pending}  # enqueued_at, name, security
            rows = [(*rest[seq], id_key(i), payload, None) for seq, i, payload in readable]
            connections.close_locked()
            connections.writer()  # a fresh spool at the path, its directory made again
            self.checkpointer.reset()  # their files went with the spool's
            self.turn.reset()
            with self.write() as conn:  # their own enqueued_at: max_age still counts from it
                conn.executemany(_INSERT, rows)
                add(conn, "dropped.rejected", len(unreadable))  # unreadable there: not carried
        return len(rows)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection and lock file this process opened; the next use reopens."""
        self.connections.close(self.checkpointer.close, self.turn.close)

    # -- the connections -------------------------------------------------------------------------

    def _opened(self, raw: sqlite3.Connection) -> None:
        """The writer's connection was opened (first use, a child after fork(), a replaced
        file): pack with the dictionary of the file now open, if it has one."""
        self.packer.forget()
        self.packer.refresh(raw)

    def gate(self) -> contextlib.AbstractContextManager[None]:
        """The writer's lock of this process (held by every write, and by opening)."""
        return self.connections.gate()

    def side(self) -> contextlib.AbstractContextManager[None]:
        """The lock of this process's other connections (reads, checkpoints)."""
        return self.connections.side()

    @contextlib.contextmanager
    def writers_turn(self) -> Iterator[None]:
        """The writers' turn, for a caller holding the gate."""
        self.turn.take(self.settings.lock_timeout)
        try:
            yield
        finally:
            self.turn.give()
