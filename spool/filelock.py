"""A lock shared by every thread and process on the host: an exclusive ``flock`` on a file
beside the spool, taken by whoever checkpoints it (see :meth:`sqreen.store.Store.checkpoint`).

SQLite lets one checkpoint run at a time and makes the others fail or wait with its sleeping
busy handler. When a burst from several processes takes the spool to its size bound, each of
them finds it there at once: without this lock their checkpoints collide (each needs every
other one out of the way) while their inserts go on. With it, one process relieves the spool
and the others wait for it, then find it relieved; a routine checkpoint that finds the lock
taken is simply skipped, since another one is running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_opening = threading.Lock()
# A thread of the parent may have held it at fork(): the child's first use must not wait for it.
os.register_at_fork(after_in_child=lambda: globals().update(_opening=threading.Lock()))
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
# The kernel has no timed flock: a contended lock is polled, briefly at first.
_FIRST_WAIT, _LONGEST_WAIT = 0.0001, 0.005


class FileLock:
    """An exclusive, reentrant lock on ``path``. Each process opens the file itself: a child
    after ``fork()`` would otherwise share its parent's open file, and so its lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid = 0
        self._fd = -1
        self._reset()

    def _reset(self) -> None:
        self._threads = threading.RLock()  # flock is per open file, not per thread
        self._depth = 0

    @contextlib.contextmanager
    def held(self, timeout: float) -> Iterator[bool]:
        """Hold the lock while the block runs, waiting at most ``timeout`` seconds for it;
        yields False (not holding it) when it could not be had in time."""
        if self._pid != os.getpid():
            with _opening:  # two threads' first use at once must open it once
                if self._pid != os.getpid():
                    self._open()
        threads, deadline = self._threads, time.monotonic() + timeout
        if not threads.acquire(timeout=timeout):
            yield False
            return
        try:
            if self._depth == 0 and not self._flock(deadline):
                yield False
                return
            self._depth += 1
            fd = self._fd
            try:
                yield True
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd == fd:  # else reset() closed it, unlocking it
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            threads.release()

    def _flock(self, deadline: float) -> bool:
        wait = _FIRST_WAIT
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            time.sleep(wait)
            wait = min(wait * 2, _LONGEST_WAIT)

    def reset(self) -> None:
        """Open the file anew (it was deleted, with the spool). The holder may call it inside
        :meth:`held`: closing the old file releases its lock, and the next holder locks the
        new one."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = os.open(self.path, _FLAGS, 0o600)

    def _open(self) -> None:
        # A parent's descriptor is left open in its child: closing it is the parent's business.
        self._fd, self._pid = os.open(self.path, _FLAGS, 0o600), os.getpid()
        self._reset()
