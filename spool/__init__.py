"""sqreen-spool: ``sqreen.track()`` backed by a durable local SQLite spool.

The public API is what ``__all__`` lists; every other module is internal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .default import auth_track, configure, flush, identify, signup_track, track
from .delivery.flusher import FlushResult
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

try:
    __version__ = version("sqreen-spool")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

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
    "track",
]
