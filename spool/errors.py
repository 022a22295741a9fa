"""Exceptions raised by sqreen-spool.

The tree::

    SqreenError
    ├── InvalidEvent (ValueError,   the caller passed something track() cannot record (also a
    │   TypeError)                  TypeError: the Sqreen agent raised TypeError for these)
    ├── ConfigError (ValueError)    a setting or environment variable is malformed
    ├── UserBlocked                 a security response blocks (or redirects) the user just
    │                               identified: the middleware answers 403 (or 303)
    └── SpoolError                  the spool cannot store events (raised only with strict=True,
        │                           and by explicit maintenance calls such as migrate)
        ├── SchemaTooNew            the spool was written by a newer sqreen-spool
        ├── UnsafeSpool             the spool's path is a symbolic link, its directory is
        │                           writable by others (no sticky bit), or its side files
        │                           belong to another user
        └── NotASpool               the spool's path holds another application's SQLite
                                    database: it is left untouched

Storage failures never raise out of ``track()`` unless the spooler is strict: they are logged,
counted and reported by ``track()`` returning ``False``.
"""

from __future__ import annotations


class SqreenError(Exception):
    """Base class of every exception raised on purpose by sqreen-spool."""


class InvalidEvent(SqreenError, ValueError, TypeError):
    """The event or its options cannot be recorded; the message names the problem.

    A TypeError too, so that code written for the Sqreen agent (which raised TypeError for a
    non-str name or a non-datetime timestamp) still catches it."""


class ConfigError(SqreenError, ValueError):
    """A setting (argument or environment variable) is malformed; the message names it."""


class UserBlocked(SqreenError):
    """A security response names the user the application just identified (``identify()``,
    a successful ``auth_track()``, ``signup_track()``): the request must not go on. The
    middleware turns it into a 403, or a 303 to ``url`` for a redirect."""

    def __init__(self, action_id: str, url: str | None = None) -> None:
        super().__init__(
            f"blocked by security response {action_id}" + (f" (redirect to {url})" if url else "")
        )
        self.action_id = action_id
        self.url = url


class SpoolError(SqreenError):
    """The spool could not store or read events."""


class SchemaTooNew(SpoolError):
    """The spool's schema revision is unknown to this version of sqreen-spool."""


class UnsafeSpool(SpoolError):
    """The spool's files could be read or swapped by another user; nothing is opened."""


class NotASpool(SpoolError):
    """The spool's path holds an SQLite database that is neither empty nor a spool (another
    application's): nothing is added to it, its mode and journal are left as they are."""
