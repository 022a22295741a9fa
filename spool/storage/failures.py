"""What storage failures are: SQLite's result codes, read through SQLAlchemy's wrapping, and
the kinds they are counted under (``Spooler.health()``, ``inspect``).

SQLAlchemy is not imported here: ``import sqreen`` does without it. An SQLAlchemy error wraps the
driver's in ``orig``; one can exist only once SQLAlchemy was imported (by whoever opened an
engine), which :func:`storage_errors` looks at when an exception is being matched.
"""

from __future__ import annotations

import sqlite3
import sys

from ..errors import NotASpool, SchemaTooNew, SpoolError, UnsafeSpool
from ..health import Health

# SQLite primary result codes (stable C API values; the sqlite3 module names them only from 3.11).
SQLITE_ERROR, SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 1, 3, 5, 6, 8
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 10, 11, 13, 14, 26
CORRUPT_CODES = frozenset({SQLITE_CORRUPT, SQLITE_NOTADB})


def sqlite_code(exc: BaseException) -> int | None:
    """The SQLite result code behind ``exc`` (unwrapping SQLAlchemy), or None."""
    exc = _unwrapped(exc)
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return None if code is None else int(code) & 0xFF


def describe(exc: BaseException) -> str:
    """One line for logs and the CLI: the driver's message, without SQLAlchemy's wrapping."""
    exc = _unwrapped(exc)
    return str(exc) or type(exc).__name__


class GateTimeout(SpoolError):
    """Another thread of this process held the spool past the lock timeout."""


def _unwrapped(exc: BaseException) -> BaseException:
    """The driver's exception inside an SQLAlchemy DBAPIError (its ``orig``), else ``exc``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


# What storage may raise, SQLAlchemy's errors aside (see storage_errors). Anything else is a bug.
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, SpoolError)


def storage_errors() -> tuple[type[BaseException], ...]:
    """What storage may raise, for ``except storage_errors():`` (evaluated only when an
    exception is being matched): SQLAlchemy's errors too, once SQLAlchemy was imported."""
    alchemy = sys.modules.get("sqlalchemy.exc")
    if alchemy is None:
        return _STORAGE_ERRORS
    return (*_STORAGE_ERRORS, alchemy.SQLAlchemyError)


def classify(exc: BaseException) -> str:
    """Name the kind of storage failure, for counters and logs."""
    if isinstance(exc, SchemaTooNew):
        return "schema_too_new"
    if isinstance(exc, GateTimeout):
        return "lock_timeout"
    if isinstance(exc, UnsafeSpool):
        return "unsafe_path"
    if isinstance(exc, NotASpool):
        return "not_a_spool"
    code = sqlite_code(exc)
    if code == SQLITE_FULL:
        return "disk_full"
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return "lock_timeout"
    if code in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM) or isinstance(exc, PermissionError):
        return "read_only"
    if code in CORRUPT_CODES:
        return "corrupt"
    if code == SQLITE_IOERR or isinstance(exc, OSError):
        return "io_error"
    return "storage_error"


def record_failure(health: Health, exc: BaseException, where: str) -> tuple[str, str]:
    """Count (and log, at a bounded rate) a storage failure of ``where``; its kind and text."""
    kind, error = classify(exc), describe(exc)
    health.record(kind, error, where)
    return kind, error
