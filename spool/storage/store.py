"""The SQLite spool file: opening, pragmas, the hot-path insert, transactions, checkpoints.

Every statement goes through this module. SQLAlchemy owns the engine, the schema and the
migrations; the per-event insert runs on one pooled DBAPI connection held for the life of the
process, because Core's statement machinery would cost more than the insert itself.

Transactions are explicit: connections run in the driver's autocommit mode (a lone statement is
its own transaction) and :meth:`Store.write` issues ``BEGIN IMMEDIATE``, so a writer takes
SQLite's write lock up front and waits it out with the busy timeout instead of failing on a
read-to-write upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..event import Event
from ..forks import at_fork
from . import schema
from .checkpoints import Checkpoints
from .failures import CORRUPT_CODES, SQLITE_BUSY, GateTimeout, sqlite_code
from .files import LOCK, TURN, file_bytes, identity
from .group import Group
from .locks import FileLock, Turn
from .opening import open_engine, stored_revision
from .revision import read_revision

if TYPE_CHECKING:  # SQLAlchemy is imported when a spool is opened, not with sqreen
    from sqlalchemy import Connection, Engine
    from sqlalchemy.pool import PoolProxiedConnection

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

_PENDING_ROWS = f"SELECT id, name, enqueued_at, payload FROM events WHERE status = {schema.PENDING}"
_INSERT = "INSERT INTO events (id, name, enqueued_at, payload) VALUES (?, ?, ?, ?)"
# Connections inherited across fork(): the child must neither use nor close them (closing would
# let SQLite drop locks and state the parent still relies on), so they are kept here for good.
_inherited: list[object] = []


class Store:
    """One spool file, opened lazily, safe across threads and ``fork()``."""

    def __init__(self, settings: Settings, after_commit: AfterCommit = _nothing_due) -> None:
        self.settings = settings
        self.path = settings.path
        # Every use of SQLite in this process holds one of two locks, so that fork() can wait
        # for both: a child forked while another thread is inside SQLite would inherit SQLite's
        # own mutexes held, and hang on its first statement. The gate guards the writer
        # connection (track()'s inserts, write transactions) and opening; the side lock guards
        # the other pooled connections (checkpoints, reads), so that a checkpoint, which takes
        # milliseconds, does not make track() wait. Order: side lock, then gate.
        self._lock = threading.RLock()
        self._side = threading.RLock()
        self._pid = os.getpid()
        self._engine: Engine | None = None
        self._writer: PoolProxiedConnection | None = None
        self._raw: Any = None  # the writer's sqlite3.Connection, for the hot path
        self.checkpointer = FileLock(Path(f"{self.path}{LOCK}"))
        # Every write transaction of every process on the host takes it first, under the gate
        # (see .locks.Turn): writers then queue without SQLite's sleeping busy handler.
        self.turn = Turn(Path(f"{self.path}{TURN}"))
        self._identity: tuple[int, int] | None = None  # the opened file's (device, inode)
        # Under a size bound smaller than the defaults assume, the WAL must stay a fraction of it.
        self.wal_limit = min(WAL_RESTART_BYTES, settings.max_bytes // 16)
        self.checkpoint_every = max(16, min(CHECKPOINT_EVERY, self.wal_limit // 8192))
        # Commits by this process (counting on across fork(): the thresholds that the hook's
        # owners compare it with stay meaningful), and the one hook told of each.
        self.inserted = 0
        self.after_commit = after_commit
        self.checkpoints = Checkpoints(self)
        self._grouped = settings.durability == "power"
        self._group = Group()
        at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork,
            after_in_child=self._forget_after_fork,
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
        lock, turn = self._lock, self.turn
        self._acquire(lock)  # by hand: a context manager would cost 2 µs of this call
        try:
            raw = self._writer_connection()
            turn.take(self.settings.lock_timeout)
            try:
                self._execute(raw, _INSERT, (event.id, event.name, time.time(), event.payload))
            except sqlite3.DatabaseError as exc:
                if sqlite_code(exc) in CORRUPT_CODES:
                    self._close_locked()  # the next call reopens, and quarantines the file
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
        lock, turn = self._lock, self.turn
        self._acquire(lock)
        try:
            raw = self._writer_connection()
            turn.take(self.settings.lock_timeout)
            try:
                self._execute(raw, "BEGIN IMMEDIATE")
                if shared:
                    # The threads that the previous commit just released are about to queue
                    # their next events: one switch lets them join this commit, not the next.
                    time.sleep(0)
                now = time.time()
                events = take()
                raw.executemany(_INSERT, [(e.id, e.name, now, e.payload) for e in events])
                raw.execute("COMMIT")
            except BaseException as exc:
                if raw.in_transaction:  # SQLite may have rolled back already (disk full)
                    raw.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and sqlite_code(exc) in CORRUPT_CODES:
                    self._close_locked()  # the next call reopens, and quarantines the file
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
            raw = self._writer_connection()
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
        now = time.time()
        with self.write() as conn:
            conn.executemany(_INSERT, [(e.id, e.name, now, e.payload) for e in events])
        self.inserted += len(events)

    # -- everything else ------------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection for reads (each statement its own snapshot), opening the spool if needed."""
        engine = self.opened()
        with self.side(), engine.connect() as conn:
            yield conn

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
        with self.connection() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM events WHERE status = ?", (schema.PENDING,)
                ).scalar_one()
            )

    def revision(self) -> str | None:
        """The schema revision stored in the spool (opening it if needed)."""
        with self.connection() as conn:
            return read_revision(conn)

    def reopen_if_replaced(self) -> int | None:
        """If the spool's path no longer names the file this process has open (deleted by a
        cleanup job, or replaced), start a fresh spool there and carry this process's view of
        the pending events over to it; return how many, or None when the file is still there.

        The old file stays readable through the open connection, so the events that went
        into it after it was deleted are not lost. One stat: for the maintenance thread.
        """
        if (
            self._identity is None
            or self._pid != os.getpid()
            or identity(self.path) == self._identity
        ):
            return None
        wait = self.settings.lock_timeout
        with self.checkpointer.held(wait), self._side, self.gate():
            if identity(self.path) == self._identity:
                return None  # another thread (maintenance, an explicit call) just did it
            rows = self._writer_connection().execute(_PENDING_ROWS).fetchall()
            self._close_locked()
            self._writer_connection()  # a fresh spool at the path, its directory made again
            self.checkpointer.reset()  # their files went with the spool's
            self.turn.reset()
            with self.write() as conn:  # their own enqueued_at: max_age still counts from it
                conn.executemany(_INSERT, rows)
        return len(rows)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this process opened; the next use reopens."""
        with self._side, self._lock:
            self._close_locked()

    # -- opening and fork -----------------------------------------------------------------------

    def gate(self) -> contextlib.AbstractContextManager[None]:
        """The writer's lock of this process (held by every write, and by opening)."""
        return self._held(self._lock)

    @contextlib.contextmanager
    def writers_turn(self) -> Iterator[None]:
        """The writers' turn, for a caller holding the gate."""
        self.turn.take(self.settings.lock_timeout)
        try:
            yield
        finally:
            self.turn.give()

    @contextlib.contextmanager
    def _held(self, lock: threading.RLock) -> Iterator[None]:
        self._acquire(lock)
        try:
            yield
        finally:
            lock.release()

    def _acquire(self, lock: threading.RLock) -> None:
        # Waiting for another thread of this process counts against the same lock timeout as
        # waiting for another process (SQLite's busy timeout).
        if not lock.acquire(timeout=self.settings.lock_timeout):
            raise GateTimeout(
                f"another thread held the spool for over {self.settings.lock_timeout} s"
            )

    def side(self) -> contextlib.AbstractContextManager[None]:
        """The lock of this process's connections other than the writer's (reads,
        checkpoints): see the constructor."""
        return self._held(self._side)

    def opened(self) -> Engine:
        """The engine, the spool opened (or made) first."""
        with self.gate():
            return self._opened()

    def _opened(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._open_writer()
        assert self._engine is not None
        return self._engine

    def _before_fork(self) -> None:
        self._side.acquire()
        self._lock.acquire()

    def _after_fork(self) -> None:
        self._lock.release()
        self._side.release()

    def _writer_connection(self) -> sqlite3.Connection:
        """The writer's sqlite3 connection, opened (or reopened after a fork) if needed; the
        caller holds the gate."""
        raw: sqlite3.Connection | None = self._raw
        if raw is None or self._pid != os.getpid():
            raw = self._open_writer()
        return raw

    def _open_writer(self) -> Any:
        if self._pid != os.getpid():
            self._forget_after_fork()
        if self._engine is None:
            self._engine = self._open_engine()
        # Before any write this process marks itself present; a lock file that cannot be ours
        # (UnsafeSpool) leaves the writer unopened, so every call refuses alike.
        self.turn.open()
        if self._writer is None:
            self._writer = self._engine.raw_connection()
            self._raw = self._writer.driver_connection
            self._raw.execute("PRAGMA busy_timeout = 0").close()  # see _execute
        return self._raw

    def _open_engine(self) -> Engine:
        engine = open_engine(self.path, self.settings, self.wal_limit)
        self._identity = identity(self.path)  # the file opened, after any quarantine
        return engine

    def _close_locked(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._engine is not None:
            self._engine.dispose()
        self._writer = self._raw = self._engine = None

    def _forget_after_fork(self) -> None:
        # Not even engine.dispose(close=False): the pool's own lock may have been held by one of
        # the parent's threads at the fork, and would then never be released in the child.
        _inherited.append((self._engine, self._writer, self._raw))
        self._lock = threading.RLock()
        self._side = threading.RLock()
        self._group.reset()
        self._writer = self._raw = self._engine = None
        self._pid = os.getpid()
