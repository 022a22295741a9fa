"""Locks shared by every thread and process on the host: exclusive ``flock``\\ s on files beside
the spool.

Two of them, with two jobs:

- :class:`FileLock` (``<spool>-lock``), taken by whoever checkpoints (see
  :meth:`sqreen.storage.store.Store.checkpoint`). SQLite lets one checkpoint run at a time and
  makes the others fail or wait with its sleeping busy handler. When a burst from several
  processes takes the spool to its size bound, each of them finds it there at once: without
  this lock their checkpoints collide while their inserts go on. With it, one process relieves
  the spool and the others wait for it, then find it relieved; a routine checkpoint that finds
  the lock taken is simply skipped, since another one is running.
- :class:`Turn` (``<spool>-turn``), the writers' queue: every write transaction of every process
  takes it first, so that a writer waits for the one ahead of it by polling a lock the kernel
  frees the moment its holder is done (or dies), a few hundred microseconds at most, where
  SQLite's busy handler sleeps for milliseconds, growing to tens of them, whether or not the
  write lock was freed meanwhile.

Waits are bounded: the kernel has no timed ``flock``, so a contended lock is polled. A holder that
crashes releases its lock with its last descriptor; one that is stopped (SIGSTOP) keeps it, and
the others give up after their timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .failures import GateTimeout
from .files import open_ours

_opening = threading.Lock()
# A thread of the parent may have held it at fork(): the child's first use must not wait for it.
os.register_at_fork(after_in_child=lambda: globals().update(_opening=threading.Lock()))
_FLAGS = os.O_RDWR | os.O_CREAT
# How often (seconds) a writer looks whether other processes are on the spool (Turn), and how
# long a process arriving tries to mark itself present.
PRESENCE_LOOK, PRESENCE_WAIT = 0.01, 0.1


class _LockFile:
    """A lock file opened by this process (a child after ``fork()`` would otherwise share its
    parent's open file, and so its lock), and the poll that waits for it."""

    def __init__(self, path: Path, first_wait: float, longest_wait: float) -> None:
        self.path = path
        self.fd = -1
        self._pid = 0
        self._waits = first_wait, longest_wait

    def opened(self) -> bool:
        """Open the file if this process has not yet; True if it did."""
        if self._pid == os.getpid():
            return False
        with _opening:  # two threads' first use at once must open it once
            if self._pid == os.getpid():
                return False
            # A parent's descriptor is left open in its child: closing it is the parent's.
            self.fd, self._pid = open_ours(str(self.path), _FLAGS), os.getpid()
            return True

    def lock(self, deadline: float) -> bool:
        """Take the lock, polling until ``deadline`` (monotonic); False if it stayed taken."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        wait, longest = self._waits
        while True:
            time.sleep(wait)  # the first, 0, only yields: the holder may be about to finish
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            wait = min(wait * 2 or longest / 8, longest)

    def reopen(self) -> None:
        """Open the file anew (it was deleted, with the spool): closing the old descriptor
        releases a lock held on it."""
        self.close()  # a refusal below leaves it to be opened at the next use
        self.opened()

    def close(self) -> None:
        """Close this process's descriptor (the store closed: the next use opens it again)."""
        if self.fd >= 0 and self._pid == os.getpid():
            os.close(self.fd)
        self.fd, self._pid = -1, 0


class FileLock:
    """An exclusive, reentrant lock on ``path`` for any thread."""

    def __init__(self, path: Path) -> None:
        self._file = _LockFile(path, 0.0001, 0.005)
        self._reset()

    def _reset(self) -> None:
        self._threads = threading.RLock()  # flock is per open file, not per thread
        self._depth = 0

    @contextlib.contextmanager
    def held(self, timeout: float) -> Iterator[bool]:
        """Hold the lock while the block runs, waiting at most ``timeout`` seconds for it;
        yields False (not holding it) when it could not be had in time."""
        if self._file.opened():
            self._reset()
        threads, deadline = self._threads, time.monotonic() + timeout
        if not threads.acquire(timeout=timeout):
            yield False
            return
        try:
            if self._depth == 0 and not self._file.lock(deadline):
                yield False
                return
            self._depth += 1
            fd = self._file.fd
            try:
                yield True
            finally:
                self._depth -= 1
                if self._depth == 0 and self._file.fd == fd:  # else reset() closed it
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            threads.release()

    def reset(self) -> None:
        """Open the file anew (it was deleted, with the spool). The holder may call it inside
        :meth:`held`: closing the old file releases its lock, and the next holder locks the
        new one."""
        self._file.reopen()

    def close(self) -> None:
        """Close the file (the store closed); the next use opens it again."""
        self._file.close()


class Turn:
    """The writers' queue of one spool: the caller of :meth:`take` and :meth:`give` holds the
    store's gate, which queues this process's threads, so it needs no thread lock; it counts
    nested takes (a write inside a write) so that only the outermost gives the turn away.

    A process alone on the spool has no one to queue behind, and a ``flock`` and its release
    cost a lone ``track()`` a tenth of its time here (system calls between SQLite's writes are
    not cheap). So each process marks its presence with a shared POSIX lock on the file's first
    byte, held for its life (the kernel drops it with the process), and looks every
    PRESENCE_LOOK seconds whether any other process holds one: only then do its writes take the
    turn. A process that arrives meets, for that long at most, one that has not seen it yet at
    SQLite's own lock, as before there was a turn."""

    def __init__(self, path: Path) -> None:
        # Polled every 200 µs at most: a commit holds it for tens of microseconds.
        self._file = _LockFile(path, 0.0, 0.0002)
        self._depth = 0
        self._holding = False
        self._crowded = True
        self._look_at = 0.0

    def open(self) -> None:
        """Open the lock file in this process, if it has not yet, and mark this process
        present: before the first take, and again in a child after ``fork()`` (the store does
        it when it opens the spool)."""
        if self._file.opened():
            self._present()

    def take(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the turn (when another process may write);
        raise GateTimeout when it stays with another writer (a process stopped holding it)."""
        # No write is in progress at fork() (the store holds its gate then): a child starts at
        # depth 0.
        if self._depth == 0:
            self._holding = self._others()
            if self._holding and not self._file.lock(time.monotonic() + timeout):
                self._holding = False
                raise GateTimeout(
                    f"another process held the spool's writers' turn for over {timeout} s"
                )
        self._depth += 1

    def give(self) -> None:
        """End a :meth:`take`."""
        self._depth -= 1
        if self._depth == 0 and self._holding:
            self._holding = False
            fcntl.flock(self._file.fd, fcntl.LOCK_UN)

    def reset(self) -> None:
        """Open the file anew; see :meth:`FileLock.reset`."""
        self._file.reopen()
        self._present()

    def close(self) -> None:
        """Close the file (the store closed: its process is no longer present through it);
        the next :meth:`open` opens it again."""
        self._file.close()
        self._depth, self._holding = 0, False

    def _others(self) -> bool:
        """Whether another process may write the spool (looked at every PRESENCE_LOOK s)."""
        now = time.monotonic()
        if now >= self._look_at:
            self._look_at = now + PRESENCE_LOOK
            fd = self._file.fd
            try:  # our own shared lock made exclusive: possible only when no one else has one
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            except OSError:
                self._crowded = True
            else:
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)  # back at once: others may arrive
                self._crowded = False
        return self._crowded

    def _present(self) -> None:
        # Another process may hold the byte exclusively for the instant of its look.
        deadline = time.monotonic() + PRESENCE_WAIT
        while True:
            try:
                fcntl.lockf(self._file.fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 0)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    break  # unseen by the others: they meet this process at SQLite's lock
                time.sleep(0.0001)
        self._crowded, self._look_at = True, 0.0
