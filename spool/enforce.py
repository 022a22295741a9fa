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
import weakref
from pathlib import Path

from .action_store import actions_version, load_actions
from .actions import ActionSet

log = logging.getLogger("sqreen.spool")

REFRESH_EVERY = 1.0

_EMPTY = ActionSet()


class Enforcer:
    """The live actions of one spool, for the per-request checks (thread- and fork-safe)."""

    def __init__(self, path: Path, refresh_every: float = REFRESH_EVERY) -> None:
        self._path = path
        self._refresh_every = refresh_every
        self._set = _EMPTY
        self._next_look = 0.0
        self._data_version: int | None = None
        self._version: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        forget = weakref.WeakMethod(self._after_fork)
        os.register_at_fork(after_in_child=lambda: (m := forget()) and m())

    def _after_fork(self) -> None:
        # A lock held by one of the parent's threads would stay held in the child, and the
        # parent's sqlite3 connection must not be used here: a child starts afresh.
        self._lock = threading.Lock()
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
        """This process changed the actions: the next call reloads them."""
        self._version = None
        self._data_version = None
        self._next_look = 0.0

    def close(self) -> None:
        with self._lock:
            self._close()

    def _refresh(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking: this request uses the set it has
        try:
            self._next_look = time.monotonic() + self._refresh_every
            if self._pid != os.getpid():  # forked without the at-fork hooks (uWSGI forks in C)
                self._forget_parent()
            self._look()
        except sqlite3.Error as exc:
            # The spool may be missing, locked or older than the actions table: keep the set
            # held (a response stays enforced through trouble), and look again next time.
            log.debug("sqreen spool: could not read the security responses: %s", exc)
            self._close()
        finally:
            self._lock.release()

    def _look(self) -> None:
        conn = self._connection()
        if conn is None:
            return
        data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if data_version == self._data_version and self._version is not None:
            return
        self._data_version = data_version
        version = actions_version(conn)
        if version == self._version:
            return
        self._set = ActionSet(load_actions(conn))
        self._version = version

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None:
            if not self._path.exists():
                return None  # nothing was ever stored: nothing to enforce (and no file made)
            self._conn = sqlite3.connect(
                f"{self._path.resolve().as_uri()}?mode=ro",
                uri=True,
                check_same_thread=False,
                timeout=0.5,
            )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._data_version = None
