"""One spool file's connections in this process, and their life across threads and ``fork()``.

The writer's sqlite3 connection (the hot path's, held for the life of the process) and the
SQLAlchemy engine that pools the others (reads, checkpoints); opened lazily, opened again when
the spool's path names another file (see :meth:`Connections.replaced`) and in a child after
``fork()``, which never uses or closes its parent's.

Every use of SQLite in this process holds one of two locks, so that fork() can wait for both: a
child forked while another thread is inside SQLite would inherit SQLite's own mutexes held, and
hang on its first statement. The gate guards the writer connection (track()'s inserts, write
transactions) and opening; the side lock guards the other pooled connections (checkpoints,
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
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..forks import at_fork
from .failures import GateTimeout
from .files import identity
from .locks import Turn
from .opening import open_engine

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.pool import PoolProxiedConnection

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
    ) -> None:
        self.settings = settings
        self._in_child = in_child  # what else a child must forget (the store's group)
        self.path = settings.path
        self._wal_limit = wal_limit
        self._turn = turn
        self.lock = threading.RLock()  # the gate
        self._side = threading.RLock()
        self._pid = os.getpid()
        self._engine: Engine | None = None
        self._writer: PoolProxiedConnection | None = None
        self._raw: Any = None  # the writer's sqlite3.Connection, for the hot path
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

    def engine(self) -> Engine:
        """The engine, the spool opened (or made) first; the caller holds the gate."""
        if self._engine is None or self._pid != os.getpid():
            self._open_writer()
        assert self._engine is not None
        return self._engine

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

    def close(self) -> None:
        """Close every connection this process opened; the next use reopens."""
        with self._side, self.lock:
            self.close_locked()

    def close_locked(self) -> None:
        """Close them, for a caller holding both locks (or the gate, on the hot path)."""
        if self._writer is not None:
            self._writer.close()
        if self._engine is not None:
            self._engine.dispose()
        self._writer = self._raw = self._engine = None

    @contextlib.contextmanager
    def _held(self, lock: threading.RLock) -> Iterator[None]:
        self.acquire(lock)
        try:
            yield
        finally:
            lock.release()

    def _open_writer(self) -> Any:
        if self._pid != os.getpid():
            self._forget_parent()
        if self._engine is None:
            self._engine = open_engine(self.path, self.settings, self._wal_limit)
            self._identity = identity(self.path)  # the file opened, after any quarantine
        # Before any write this process marks itself present; a lock file that cannot be ours
        # (UnsafeSpool) leaves the writer unopened, so every call refuses alike.
        self._turn.open()
        if self._writer is None:
            self._writer = self._engine.raw_connection()
            self._raw = self._writer.driver_connection
            self._raw.execute("PRAGMA busy_timeout = 0").close()  # see Store._execute
        return self._raw

    def _before_fork(self) -> None:
        self._side.acquire()
        self.lock.acquire()

    def _after_fork(self) -> None:
        self.lock.release()
        self._side.release()

    def _forget_parent(self) -> None:
        # Not even engine.dispose(close=False): the pool's own lock may have been held by one of
        # the parent's threads at the fork, and would then never be released in the child.
        _inherited.append((self._engine, self._writer, self._raw))
        self.lock = threading.RLock()
        self._side = threading.RLock()
        self._writer = self._raw = self._engine = None
        self._pid = os.getpid()
        self._in_child()
