"""The process-wide default spooler behind the module-level ``sqreen.track()`` and friends,
made from the environment on first use."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import settings_file
from .config import Settings
from .delivery.result import FlushResult
from .errors import ConfigError
from .spooler import Spooler

log = logging.getLogger("sqreen.spool")

_default: Spooler | None = None
_started: Spooler | None = None  # the spooler sqreen.start() made
_default_lock = threading.Lock()
# Module-level calls and requests that found the environment's settings malformed (each then
# does nothing), and when that was last logged: at most once per MISCONFIGURED_LOG_EVERY s.
MISCONFIGURED_LOG_EVERY = 60.0
misconfigured = 0
_misconfigured_logged = -MISCONFIGURED_LOG_EVERY


def default_spooler() -> Spooler:
    """The spooler behind the module-level functions, created from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Spooler()
        return _default


def current_spooler() -> Spooler | None:
    """The default spooler, without taking the lock once it exists (per call, per request);
    None when the environment's settings are malformed.

    A misconfigured library must never fail the host's requests or its calls to ``track()``:
    the call does nothing, and the error is counted (:data:`misconfigured`) and logged at most
    once a minute. An explicit :func:`configure` or ``Spooler(...)`` still raises ConfigError.
    """
    spooler = _default
    if spooler is not None:
        return spooler
    try:
        return default_spooler()
    except ConfigError as exc:
        global misconfigured, _misconfigured_logged
        misconfigured += 1
        now = time.monotonic()
        if now - _misconfigured_logged >= MISCONFIGURED_LOG_EVERY:
            _misconfigured_logged = now
            log.error(
                "sqreen spool: the settings are malformed, nothing is recorded or enforced "
                "(%d calls so far): %s",
                misconfigured,
                exc,
            )
        return None


def start(**settings: Any) -> Spooler:
    """The one call at boot: resolve the settings (keyword arguments, then the settings file,
    then the environment), raise :class:`ConfigError` at once on a bad one, open (and if needed
    migrate) the spool and start the background threads, so that no request pays for any of
    it. The started spooler is the default one, behind ``sqreen.track()`` and the middlewares.

    Calling it again with the same settings returns the same spooler; with other settings it
    raises ConfigError (use :func:`configure` to replace the default spooler on purpose).
    """
    global _default, _started
    environ: Mapping[str, str] = os.environ
    found = settings_file.find(environ)
    if found is not None:
        known = [f.metadata["env"] for f in dataclasses.fields(Settings)]
        environ = {**os.environ, **settings_file.read(found, known)}
    resolved = Settings.resolve(settings, environ)
    with _default_lock:
        if _started is not None:
            if _started.settings != resolved:
                raise ConfigError(
                    "sqreen.start() was already called with other settings "
                    f"({_started.settings!r}); it is called once, at boot"
                )
            return _started
        spooler = Spooler.from_settings(resolved)
        previous, _default, _started = _default, spooler, spooler
    if previous is not None:
        previous.close()
    spooler.start()
    return spooler


def stop(timeout: float | None = None) -> None:
    """Close the spooler :func:`start` made (its pending events delivered within ``timeout``),
    for a framework's shutdown hook; the next call of the module-level functions makes one from
    the environment again."""
    global _default, _started
    with _default_lock:
        started, _started = _started, None
        if started is not None and _default is started:
            _default = None
    if started is not None:
        started.close(timeout)


def configure(**settings: Any) -> Spooler:
    """Replace the default spooler with one built from ``settings``; return it."""
    global _default, _started
    spooler = Spooler(**settings)
    with _default_lock:
        previous, _default, _started = _default, spooler, None
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
    spooler = _default or current_spooler()
    return False if spooler is None else spooler.identify(user_identifiers, traits)


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
    spooler = _default or current_spooler()
    return False if spooler is None else spooler.track(event_name, options)


def auth_track(success: bool, **user_identifiers: str | int) -> bool:
    """Record a login attempt as the event ``sqreen.auth_track`` (property ``success``) with
    the given user identifiers (str or int values); inside a request it carries the request
    too, and a successful one identifies the request's user (as :func:`identify`)."""
    spooler = _default or current_spooler()
    return False if spooler is None else spooler.auth_track(success, **user_identifiers)


def signup_track(**user_identifiers: str | int) -> bool:
    """Record a signup as the event ``sqreen.signup_track`` with the given user identifiers;
    inside a request it also identifies the request's user (as :func:`identify`)."""
    spooler = _default or current_spooler()
    return False if spooler is None else spooler.signup_track(**user_identifiers)


def flush(timeout: float | None = None) -> FlushResult:
    """Deliver the default spool's pending events now, waiting at most ``timeout`` seconds."""
    spooler = current_spooler()
    return FlushResult() if spooler is None else spooler.flush(timeout)
