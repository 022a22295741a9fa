"""The security responses one process enforces: the spool's actions, compiled, kept fresh.

Requests never query the spool: they read the compiled set this object holds. At most once a
second (``REFRESH_EVERY``), one caller looks at ``PRAGMA data_version`` (has any other
connection committed since?) and, if so, at the ``actions.version`` counter; only a changed
counter reloads the actions. So a change made by any process (its flusher storing a collector's
answer, an operator's command) is enforced by every process on the spool within about a second,
and this process's own changes at once (:meth:`Enforcer.invalidate`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from .. import clock
from ..forks import at_fork
from ..storage.files import identity, read_only
from .action_store import actions_version, load_actions
from .actions import ActionSet

log = logging.getLogger("sqreen.spool")

REFRESH_EVERY = 1.0

_EMPTY = ActionSet()


class Enforcer:
    """The live actions of one spool, for the per-request checks (thread- and fork-safe).

    A request only ever reads the compiled set held here. The look at the spool (a pragma and a
    counter, once a second) runs on whichever request comes first; reading and compiling a
    changed list (milliseconds for thousands of ranges) runs on a thread of its own, and the
    requests meanwhile use the set they have. So does a set whose earliest expiry has passed:
    it is compiled again without the expired actions (until then its lookups step past them,
    see :class:`ActionSet`). The first set is compiled by the first caller, so that a process
    never serves a request before knowing its blocks.
    """

    def __init__(self, path: Path, refresh_every: float = REFRESH_EVERY) -> None:
        self._path = path
        self._refresh_every = refresh_every
        self._set = _EMPTY
        self._loaded = False
        self._next_look = 0.0
        self._data_version: int | None = None
        self._version: int | None = None
        self._identity: tuple[int, int] | None = None
        self._conn: sqlite3.Connection | None = None
        self._compiler: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A lock held by one of the parent's threads would stay held in the child, and the
        # parent's sqlite3 connection must not be used here: a child starts afresh.
        self._lock = threading.Lock()
        self._compiler = None
        self._forget_parent()
        self._next_look = 0.0

    def _forget_parent(self) -> None:
        """Drop what belongs to the process this one was forked from: its connection, and the
        versions seen through it (the next look reloads)."""
        self._conn, self._pid = None, os.getpid()
        self._version = self._data_version = None

    def current(self) -> ActionSet:
        """The live actions: one clock read per call, a look at the spool once a second."""
        if time.monotonic() >= self._next_look:
            self._refresh()
        return self._set

    def invalidate(self) -> None:
        """This process changed the actions: load and compile them now, in the caller's
        thread (the delivery thread, after storing a collector's new list)."""
        with self._lock:
            self._version = self._data_version = None
            self._next_look = 0.0
            self._reload()

    def close(self, timeout: float = 1.0) -> None:
        compiler = self._compiler
        if compiler is not None and compiler is not threading.current_thread():
            compiler.join(timeout)
        with self._lock:
            self._close()

    def _refresh(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking or compiling: this request uses the set it has
        compile_later = False
        try:
            self._next_look = time.monotonic() + self._refresh_every
            if self._pid != os.getpid():  # forked without the at-fork hooks (uWSGI forks in C)
                self._forget_parent()
            if self._changed():
                compile_later = self._loaded
                if not compile_later:
                    self._reload()
        except sqlite3.Error as exc:
            compile_later = False
            self._failed(exc)
        finally:
            if not compile_later:
                self._lock.release()
        if compile_later:
            self._start_compiler()  # the compiler's thread releases the lock

    def _start_compiler(self) -> None:
        thread = threading.Thread(target=self._compile, name="sqreen-spool:actions", daemon=True)
        self._compiler = thread
        try:
            thread.start()
        except RuntimeError:  # no thread can be started (interpreter shutting down)
            self._compiler = None
            self._lock.release()

    def _compile(self) -> None:
        try:
            self._reload()
        except sqlite3.Error as exc:
            self._failed(exc)
        finally:
            self._lock.release()

    def _changed(self) -> bool:
        """Whether the set must be compiled again: the actions changed (or were never read),
        or one of them expired; the caller holds the lock."""
        conn = self._connection()
        if conn is None:
            return False
        data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        expired = clock.now() >= self._set.expires_next
        if data_version == self._data_version and self._version is not None and not expired:
            return False
        self._data_version = data_version
        return expired or actions_version(conn) != self._version

    def _reload(self) -> None:
        """Read and compile the actions; the caller holds the lock."""
        conn = self._connection()
        if conn is None:
            self._loaded = True
            return
        version = actions_version(conn)
        self._set = ActionSet(load_actions(conn), clock.now())
        self._version, self._loaded = version, True

    def _failed(self, exc: sqlite3.Error) -> None:
        # The spool may be missing, locked or older than the actions table: keep the set held
        # (a response stays enforced through trouble), and look again next time.
        log.debug("sqreen spool: could not read the security responses: %s", exc)
        self._close()

    def _connection(self) -> sqlite3.Connection | None:
        """The read-only connection, opened anew when the spool's path names another file
        (the spool was deleted or replaced: the old file would be read for ever)."""
        found = identity(self._path)
        if found is None:
            self._close()
            return None  # nothing was ever stored: nothing to enforce (and no file made)
        if self._conn is not None and found != self._identity:
            self._close()
            self._version = None
        if self._conn is None:
            self._conn = read_only(self._path, timeout=0.5, threads=True)
            self._identity = found
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._data_version = None
