"""Storage failures of one spooler in this process: counted by kind, logged without flooding."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("sqreen.spool")

DEFAULT_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class HealthReport:
    """What went wrong with storage since the spooler was created (this process only)."""

    failures: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())


class Health:
    """Counts failures by kind and logs each kind at most once per ``log_interval`` seconds.

    A full disk fails every ``track()`` call; one log line per call would bury the host's logs
    and cost more than the failed insert, so repeats are summed into the next line instead.
    """

    def __init__(self, log_interval: float | None = DEFAULT_LOG_INTERVAL) -> None:
        """``log_interval=None``: count without logging (the caller reports failures itself)."""
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._failures: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._saved: Counter[str] = Counter()
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        reset = weakref.WeakMethod(self._new_lock)
        os.register_at_fork(after_in_child=lambda: (m := reset()) and m())

    def _new_lock(self) -> None:
        # A lock held by one of the parent's threads at fork() would stay held in the child.
        self._lock = threading.Lock()

    def record(self, kind: str, error: str, what: str) -> None:
        """Count one failure of ``kind`` while doing ``what``; log it unless logged recently."""
        now = time.monotonic()
        with self._lock:
            self._failures[kind] += 1
            self._last_error = f"{kind}: {error}"
            self._last_error_at = time.time()
            if self._log_interval is None:
                return
            logged_at = self._logged_at.get(kind)
            if logged_at is not None and now - logged_at < self._log_interval:
                self._unlogged[kind] += 1
                return
            self._logged_at[kind] = now
            repeats = self._unlogged.pop(kind, 0)
        suffix = f" ({repeats} more since the last report)" if repeats else ""
        log.error("sqreen spool: %s failed (%s): %s%s", what, kind, error, suffix)

    def unsaved(self) -> Counter[str]:
        """Failures counted since the last :meth:`saved`, by kind."""
        with self._lock:
            return self._failures - self._saved

    def saved(self, counts: Counter[str]) -> None:
        """Note that ``counts`` are now recorded in the spool itself."""
        with self._lock:
            self._saved += counts

    def report(self) -> HealthReport:
        with self._lock:
            return HealthReport(dict(self._failures), self._last_error, self._last_error_at)
