"""One spool file's connections in this process, and their life across threads and ``fork()``.

Two plain sqlite3 connections, each held for the life of the process: the writer's (the hot
path's inserts and every write transaction) and the reader's (reads, checkpoints). Opened
lazily (see :mod:`.opening`), opened again when the spool's path names another file (see
:meth:`Connections.replaced`) and in a child after ``fork()``, which never uses or closes its
parent's. SQLAlchemy serves migrations and the operator's tools, not these.

Every use of SQLite in this process holds one of two locks, so that fork() can wait for both: a
child forked while another thread is inside SQLite would inherit SQLite's own mutexes held, and
hang on its first statement. The gate guards the writer connection (track()'s inserts, write
transactions) and opening; the side lock guards the reader's connection (checkpoints,
reads), so that a checkpoint, which takes milliseconds, does not make track() wait. Order: side
lock, then gate. A child forked without the at-fork hooks (uWSGI forks in C) is recognised by
its pid at its first use.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator

from ..config import Settings
from ..forks import at_fork
from .failures import GateTimeout
from .files import identity
from .locks import Turn
from .opening import connect, open_spool

# Connections inherited across fork(): the child must neither use nor close them (closing would
# let SQLite drop locks and state the parent still relies on), so they are kept here for good.
_inherited: list[object] = []


class Connections:
    """The connections of one spool file in this process."""

    def __init__(
        self,
        settings: Settings,
        wal_limit: int,
        turn: Turn,
        in_child: Callable[[], None] = lambda: None,
        opened: Callable[[sqlite3.Connection], None] = lambda raw: None,
    ) -> None:
        self.settings = settings
        self._in_child = in_child  # what else a child must forget (the store's group)
        self._opened = opened  # told of each writer's connection opened (the store's packer)
        self.path = settings.path
        self._wal_limit = wal_limit
        self._turn = turn
        self.lock = threading.RLock()  # the gate
        self._side = threading.RLock()
        self._pid = os.getpid()
        self._raw: sqlite3.Connection | None = None  # the writer's
        self._reader: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # the opened file's (device, inode)
        at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork,
            after_in_child=self._forget_parent,
        )

    def acquire(self, lock: threading.RLock) -> None:
        """Take one of the two locks; waiting for another thread of this process counts against
        the same lock timeout as waiting for another process."""
        if not lock.acquire(timeout=self.settings.lock_timeout):
            raise GateTimeout(
                f"another thread held the spool for over {self.settings.lock_timeout} s"
            )

    def gate(self) -> contextlib.AbstractContextManager[None]:
        return self._held(self.lock)

    def side(self) -> contextlib.AbstractContextManager[None]:
        return self._held(self._side)

    def reader(self) -> sqlite3.Connection:
        """The reader's connection, the spool opened (or made) first; the caller holds the side
        lock."""
        reader = self._reader
        if reader is None or self._pid != os.getpid():
            with self._held(self.lock):
                self.writer()  # opening (or migrating, or quarantining) happens under the gate
                reader = self._reader = connect(self.path, self.settings, self._wal_limit)
        return reader

    def writer(self) -> sqlite3.Connection:
        """The writer's sqlite3 connection, opened (or reopened after a fork) if needed; the
        caller holds the gate."""
        raw: sqlite3.Connection | None = self._raw
        if raw is None or self._pid != os.getpid():
            raw = self._open_writer()
        return raw

    def replaced(self) -> bool:
        """Whether the spool's path names another file than the one this process opened
        (deleted by a cleanup job, or replaced): one stat."""
        return (
            self._identity is not None
            and self._pid == os.getpid()
            and identity(self.path) != self._identity
        )

    def close(self, *also: Callable[[], None]) -> None:
        """Close every connection this process opened, and run ``also`` (the store's lock files
        closing) under the same two locks; the next use reopens them all."""
        with self._side, self.lock:
            self.close_locked()
            for close in also:
                close()

    def close_locked(self) -> None:
        """Close them, for a caller holding both locks (or the gate, on the hot path)."""
        # The reader first: the last connection to close checkpoints the WAL, and the writer's
        # close may find it still in use otherwise.
        for connection in (self._reader, self._raw):
            if connection is not None:
                connection.close()
        self._raw = self._reader = None

    @contextlib.contextmanager
    def _held(self, lock: threading.RLock) -> Iterator[None]:
        self.acquire(lock)
        try:
            yield
        finally:
            lock.release()

    def _open_writer(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._forget_parent()
        raw = open_spool(self.path, self.settings, self._wal_limit)
        try:
            # Before any write this process marks itself present; a lock file that cannot be
            # ours (UnsafeSpool) leaves the writer unopened, so every call refuses alike.
            self._turn.open()
        except BaseException:
            raw.close()
            raise
        self._identity = identity(self.path)  # the file opened, after any quarantine
        raw.execute("PRAGMA busy_timeout = 0").close()  # see Store._execute
        self._opened(raw)
        self._raw = raw
        return raw

    def _before_fork(self) -> None:
        self._side.acquire()
        self.lock.acquire()

    def _after_fork(self) -> None:
        self.lock.release()
        self._side.release()

    def _forget_parent(self) -> None:
        _inherited.append((self._raw, self._reader))
        self.lock = threading.RLock()
        self._side = threading.RLock()
        self._raw = self._reader = None
        self._pid = os.getpid()
        self._in_child()
