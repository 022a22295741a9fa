"""The process-wide default spooler behind the module-level ``sqreen.track()`` and friends,
made from the environment on first use."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .flusher import FlushResult
from .spooler import Spooler

_default: Spooler | None = None
_default_lock = threading.Lock()


def default_spooler() -> Spooler:
    """The spooler behind the module-level functions, created from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Spooler()
        return _default


def current_spooler() -> Spooler:
    """The default spooler, without taking the lock once it exists (per request)."""
    return _default or default_spooler()


def configure(**settings: Any) -> Spooler:
    """Replace the default spooler with one built from ``settings``; return it."""
    global _default
    spooler = Spooler(**settings)
    with _default_lock:
        previous, _default = _default, spooler
    if previous is not None:
        previous.close()
    return spooler


def identify(
    user_identifiers: Mapping[str, str | int], traits: Mapping[str, Any] | None = None
) -> bool:
    """Attach a user to the current HTTP request: later ``track()`` calls in this request use
    ``user_identifiers`` (a mapping of str to str or int) unless they pass their own. Returns
    False outside a request (where it has nothing to attach to, and logs a warning once).
    Raises :class:`sqreen.UserBlocked` when a security response blocks that user.

    ``traits`` (a mapping of JSON values) are kept with the request's user.
    """
    return (_default or default_spooler()).identify(user_identifiers, traits)


def track(event_name: str, options: Mapping[str, Any] | None = None) -> bool:
    """Record a custom event in the local spool; return True once it is durably stored.

    ``options`` (any mapping) may hold ``properties`` (at most 16 JSON values),
    ``user_identifiers`` (str to str or int), ``timestamp`` (a datetime; naive means UTC;
    default now) and ``collect_body`` (a bool: the event also carries the request body's
    fields). Mistakes raise :class:`sqreen.InvalidEvent`; what the Sqreen agent tolerated (an
    unknown key, more than 16 properties, an ``sq.`` name) is warned about instead, unless the
    spooler is strict. Storage trouble returns False, is logged and counted (or raises
    :class:`sqreen.SpoolError` when the spooler is strict).
    """
    spooler = _default or default_spooler()
    return spooler.track(event_name, options)


def auth_track(success: bool, **user_identifiers: str | int) -> bool:
    """Record a login attempt as the event ``sqreen.auth_track`` (property ``success``) with
    the given user identifiers (str or int values); inside a request it carries the request
    too, and a successful one identifies the request's user (as :func:`identify`)."""
    return (_default or default_spooler()).auth_track(success, **user_identifiers)


def signup_track(**user_identifiers: str | int) -> bool:
    """Record a signup as the event ``sqreen.signup_track`` with the given user identifiers;
    inside a request it also identifies the request's user (as :func:`identify`)."""
    return (_default or default_spooler()).signup_track(**user_identifiers)


def flush(timeout: float | None = None) -> FlushResult:
    """Deliver the default spool's pending events now, waiting at most ``timeout`` seconds."""
    return default_spooler().flush(timeout)
