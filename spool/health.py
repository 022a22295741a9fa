"""What went wrong for one spooler in this process: storage and delivery failures, and the
callers' mistakes that the agent tolerated, counted by kind and logged without flooding."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from . import clock
from .forks import at_fork

log = logging.getLogger("sqreen.spool")
# The agent's own logger name, where its users already look for the SDK's warnings.
sdk_log = logging.getLogger("sqreen")

DEFAULT_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class HealthReport:
    """What went wrong since the spooler was created (this process only): ``failures`` of
    storage and delivery, and ``warnings`` about calls recorded leniently, by kind."""

    failures: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None
    warnings: dict[str, int] = field(default_factory=dict)

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())


class Health:
    """Counts failures and warnings by kind and logs each kind at most once per
    ``log_interval`` seconds.

    A full disk fails every ``track()`` call, and a handler with a mistake repeats it on every
    request; one log line per call would bury the host's logs and cost more than the call, so
    repeats are summed into the next line instead.
    """

    def __init__(self, log_interval: float | None = DEFAULT_LOG_INTERVAL) -> None:
        """``log_interval=None``: count without logging (the caller reports failures itself)."""
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._failures: Counter[str] = Counter()
        self._warnings: Counter[str] = Counter()
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._logged_at: dict[tuple[str, str], float] = {}
        self._saved: Counter[str] = Counter()
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        # A lock held by one of the parent's threads at fork() would stay held in the child.
        self._lock = threading.Lock()

    def record(self, kind: str, error: str, what: str) -> None:
        """Count one failure of ``kind`` while doing ``what``; log it unless logged recently."""
        with self._lock:
            self._failures[kind] += 1
            self._last_error = f"{kind}: {error}"
            self._last_error_at = clock.now()
            repeats = self._due(("failed", kind))
        if repeats is not None:
            log.error("sqreen spool: %s failed (%s): %s%s", what, kind, error, _more(repeats))

    def warn(self, kind: str, message: str) -> None:
        """Count one call recorded leniently (or refused) for ``kind``; log a warning on the
        ``sqreen`` logger unless one of its kind was logged recently."""
        with self._lock:
            self._warnings[kind] += 1
            repeats = self._due(("warned", kind))
        if repeats is not None:
            sdk_log.warning("sqreen: %s%s", message, _more(repeats))

    def _due(self, key: tuple[str, str]) -> int | None:
        """The repeats to mention if ``key`` is due for a log line now, else None (counted)."""
        if self._log_interval is None:
            return None
        now = time.monotonic()
        logged_at = self._logged_at.get(key)
        if logged_at is not None and now - logged_at < self._log_interval:
            self._unlogged[key] += 1
            return None
        self._logged_at[key] = now
        return self._unlogged.pop(key, 0)

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
            return HealthReport(
                dict(self._failures),
                self._last_error,
                self._last_error_at,
                dict(self._warnings),
            )


def _more(repeats: int) -> str:
    return f" ({repeats} more since the last report)" if repeats else ""
