"""The public ``Spooler`` object and the process-wide default one behind ``sqreen.track()``."""

from __future__ import annotations

import atexit
import sqlite3
import threading
import weakref
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .config import Settings
from .errors import SpoolError
from .event import build
from .health import Health, HealthReport
from .store import Store, classify, describe
from .worker import Worker

# What storage may raise. Anything else is a bug and propagates.
STORAGE_ERRORS = (sqlite3.Error, SQLAlchemyError, OSError, SpoolError)

_live: weakref.WeakSet[Spooler] = weakref.WeakSet()


class Spooler:
    """One spool file and the work around it.

    Keyword arguments are the settings listed in the README (``path``, ``durability``,
    ``lock_timeout``, ``strict``, ...); an argument left out is read from its environment variable,
    then from its default.
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings.resolve(settings)
        self._store = Store(self.settings)
        self._health = Health()
        self._worker = Worker(f"sqreen-spool:{self.settings.path.name}", self._maintain)
        _live.add(self)

    @property
    def path(self) -> str:
        """The spool file's path."""
        return str(self.settings.path)

    def track(self, event_name: str, options: dict[str, Any] | None = None) -> bool:
        """Record a custom event durably; see :func:`sqreen.track`."""
        event = build(event_name, options)
        try:
            checkpoint_due = self._store.insert(event)
        except STORAGE_ERRORS as exc:
            self._storage_failed(exc, "track")
            return False
        if checkpoint_due:
            self._worker.wake()
        return True

    def health(self) -> HealthReport:
        """Storage failures counted by kind in this process, and the last error."""
        return self._health.report()

    def close(self, timeout: float | None = None) -> None:
        """Stop the background thread (waiting at most ``timeout`` s) and close the spool file."""
        self._worker.stop(self.settings.shutdown_timeout if timeout is None else timeout)
        self._store.close()

    def _maintain(self) -> None:
        try:
            self._store.checkpoint()
        except STORAGE_ERRORS as exc:
            self._storage_failed(exc, "checkpoint")

    def _storage_failed(self, exc: BaseException, what: str) -> None:
        kind, error = classify(exc), describe(exc)
        self._health.record(kind, error, what)
        if self.settings.strict:
            if isinstance(exc, SpoolError):
                raise exc
            raise SpoolError(f"{what} failed ({kind}): {error}") from exc


_default: Spooler | None = None
_default_lock = threading.Lock()


def default_spooler() -> Spooler:
    """The spooler behind the module-level functions, created from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Spooler()
        return _default


def configure(**settings: Any) -> Spooler:
    """Replace the default spooler with one built from ``settings``; return it."""
    global _default
    spooler = Spooler(**settings)
    with _default_lock:
        previous, _default = _default, spooler
    if previous is not None:
        previous.close()
    return spooler


def track(event_name: str, options: dict[str, Any] | None = None) -> bool:
    """Record a custom event in the local spool; return True once it is durably stored.

    ``options`` may hold ``properties`` (a dict of at most 16 JSON values), ``user_identifiers``
    (a dict of str to str) and ``timestamp`` (a datetime; naive means UTC; default now).
    Mistakes raise :class:`sqreen.InvalidEvent`. Storage trouble returns False, is logged and
    counted (or raises :class:`sqreen.SpoolError` when the spooler is strict).
    """
    spooler = _default or default_spooler()
    return spooler.track(event_name, options)


@atexit.register
def _stop_all() -> None:
    for spooler in list(_live):
        spooler.close()
