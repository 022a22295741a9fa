"""sqreen-spool: ``sqreen.track()`` backed by a durable local SQLite spool.

The public API is what ``__all__`` lists; every other module is internal.
"""

from __future__ import annotations

from .default import auth_track, configure, flush, identify, signup_track, start, track
from .delivery.result import FlushResult
from .errors import (
    ConfigError,
    InvalidEvent,
    NotASpool,
    SchemaTooNew,
    SpoolError,
    SqreenError,
    UnsafeSpool,
    UserBlocked,
)
from .health import HealthReport
from .spooler import Spooler


def __getattr__(name: str) -> str:
    # The version is read from the installed metadata when first asked for: importlib.metadata
    # costs a quarter of import sqreen's time.
    if name != "__version__":
        raise AttributeError(f"module 'sqreen' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sqreen-spool")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found


__all__ = [
    "ConfigError",
    "FlushResult",
    "HealthReport",
    "InvalidEvent",
    "NotASpool",
    "SchemaTooNew",
    "SpoolError",
    "Spooler",
    "SqreenError",
    "UnsafeSpool",
    "UserBlocked",
    "__version__",
    "auth_track",
    "configure",
    "flush",
    "identify",
    "signup_track",
    "start",
    "track",
]
