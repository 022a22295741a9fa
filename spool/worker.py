"""The spooler's one background thread in each process.

Started lazily, restarted lazily in a child after ``fork()`` (threads do not survive a fork, and
the locks they held must be replaced), and stopped with a bounded wait so that exit is never held.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from .forks import at_fork

log = logging.getLogger("sqreen.spool")

# After a failure before the work ever said when to run next, it runs again this much later.
FAILURE_DELAY = 1.0


class Worker:
    """Runs ``work()`` once started, then each time it is woken or when the delay it returned
    (seconds, or None for "only when woken") has passed."""

    def __init__(self, name: str, work: Callable[[], float | None]) -> None:
        self._name = name
        self._work = work
        self._reset()
        at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def wake(self) -> None:
        """Ask for one run of ``work()`` soon, starting the thread if it is not running."""
        self.start()
        self._wakeup.set()

    def start(self) -> None:
        """Start the thread in this process if it is not running yet."""
        if self._thread is not None:  # reset in a child by the at-fork hook
            return
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
            if self._thread is None and not self._stopping:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread

    def stop(self, timeout: float) -> bool:
        """Stop the thread, waiting at most ``timeout`` seconds; True if it has stopped."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wakeup.set()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        delay: float | None = 0.0
        last: float | None = FAILURE_DELAY  # what the work last asked for, kept after a failure
        while not self._stopping:
            if delay != 0.0:
                self._wakeup.wait(delay)
            self._wakeup.clear()
            if self._stopping:
                return
            try:
                delay = self._work()
            except Exception:  # the worker must outlive any failure, and keep its schedule
                log.exception("sqreen spool: background work failed")
                delay = last
            last = delay if delay is not None else last
