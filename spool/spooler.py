"""The public ``Spooler`` object: one spool file and the work around it."""

from __future__ import annotations

import atexit
import contextlib
import logging
import time
import weakref
from collections.abc import Mapping
from functools import partial
from typing import Any

from .config import Settings
from .delivery.make import make_flusher
from .delivery.result import FlushResult
from .delivery.sink import Sink
from .errors import SpoolError
from .event import (
    RESERVED_PREFIX,
    Strictness,
    as_bool,
    build,
    check_identifiers,
    check_json,
    check_name,
    check_properties,
    read_options,
    relax,
)
from .forks import at_fork
from .health import Health, HealthReport
from .priority import NO_NAMES, Classes
from .request.context import RequestBuilder, RequestContext
from .request.context import current as current_request
from .request.scrub import Scrubber
from .security.actions import Action
from .security.enforcer import Enforcer
from .security.responder import Responder
from .stats import Stats, read_stats
from .storage.failures import record_failure, storage_errors
from .storage.outbox import Outbox
from .storage.store import Store
from .upkeep import Upkeep

log = logging.getLogger("sqreen.spool")


_live: weakref.WeakSet[Spooler] = weakref.WeakSet()
_warned_identify = False


class Spooler:
    """One spool file and the work around it.

    Keyword arguments are the settings (``path``, ``durability``, ``url``, ``max_bytes``, ...;
    see docs/settings.md); an argument left out is read from its environment variable, then from
    its default. ``sink`` delivers somewhere else than ``url`` says: any object of the
    :class:`sqreen.delivery.sink.Sink` protocol. Use it as a context manager to close it.
    """

    def __enter__(self) -> Spooler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __init__(self, *, sink: Sink | None = None, **settings: Any) -> None:
        self._build(Settings.resolve(settings), sink)

    @classmethod
    def from_settings(cls, settings: Settings, sink: Sink | None = None) -> Spooler:
        """A spooler of settings already resolved (see :func:`sqreen.start`)."""
        spooler = cls.__new__(cls)
        spooler._build(settings, sink)
        return spooler

    def _build(self, settings: Settings, sink: Sink | None) -> None:
        self.settings = settings
        self._store = Store(self.settings, self._after_commit)
        self._scrubber = Scrubber(
            self.settings.strip_sensitive_keys,
            self.settings.strip_sensitive_regex,
            self.settings.strip_sensitive_data,
        )
        self._requests = RequestBuilder(
            self.settings.ip_header, self._scrubber, self.settings.trusted_proxies
        )
        self._scrub_properties = (
            self.settings.strip_sensitive_data and self.settings.strip_sensitive_properties
        )
        self._health = Health()
        self._rules = Strictness(self.settings.strict, self._health.warn)
        self._classes = Classes(self.settings.security_events)
        self._outbox = Outbox(self._store)
        self._flusher = make_flusher(self.settings, self._outbox, self._health, sink)
        self._responder = Responder(self.settings.path, self._record)
        if self._flusher is not None:
            self._flusher.on_actions = self.enforcer.invalidate
        self._upkeep = Upkeep(
            self.settings, self._store, self._flusher, self._health, self._responder
        )
        self._tracked = False
        self._running = False  # whether this process started the background threads
        at_fork(after_in_child=self._forked)
        _live.add(self)

    @property
    def path(self) -> str:
        """The spool file's path."""
        return str(self.settings.path)

    def track(self, event_name: str, options: Mapping[str, Any] | None = None) -> bool:
        """Record a custom event durably; see :func:`sqreen.track`."""
        if type(event_name) is str and event_name.startswith(RESERVED_PREFIX):
            relax(
                self._rules,
                "reserved_name",
                f"event names starting with {RESERVED_PREFIX!r} are reserved for sqreen's own "
                f"events; {event_name!r} was not recorded",
            )
            return False
        return self._record(event_name, options)

    def _record(self, event_name: object, options: Mapping[str, Any] | None) -> bool:
        """Record an event, reserved names included: the library's own events come this way."""
        rules = self._rules
        if options is not None:
            options = read_options(options)  # once, into plain types
            if self._scrub_properties and options.get("properties"):
                # The caller's mistakes first, then what is scrubbed.
                properties = check_properties(
                    options["properties"], rules=rules, event_name=check_name(event_name)
                )
                options = {**options, "properties": self._scrubber.scrub(properties)}
        request = current_request()
        if request is None:
            event = build(event_name, options, rules=rules)
        else:
            body = partial(request.request_json, self._requests)
            event = build(event_name, options, request.user, body, rules)
        flusher, classes = self._flusher, self._classes
        urgent = NO_NAMES if flusher is None else flusher.urgent
        # The class known for the name, without a call (see Classes.security).
        security = classes.known.get(event.name) if urgent is classes.urgent else None
        if security is None:
            security = classes.security(event.name, urgent)
        if security:
            event = event._replace(security=True)
        try:
            maintenance_due = self._store.insert(event)
        except storage_errors() as exc:
            self._storage_failed(exc, "track")
            return False
        self._tracked = True
        if not self._running:  # once per process: the threads then run until close()
            self._running = True
            self._upkeep.start()
        if maintenance_due:
            self._upkeep.wake()
        if security and event.name in urgent:  # a playbook watches it
            self._upkeep.security_event()
        return True

    def identify(
        self, user_identifiers: Mapping[str, str | int], traits: Mapping[str, Any] | None = None
    ) -> bool:
        """Attach a user to the current request; see :func:`sqreen.identify`."""
        identifiers = check_identifiers(user_identifiers, "user_identifiers")
        kept = None if traits is None else check_json(traits, "traits")
        if self._attach(identifiers, kept):
            return True
        global _warned_identify
        if not _warned_identify:
            _warned_identify = True
            log.warning("sqreen.identify() called outside a request: it has no effect there")
        return False

    def auth_track(self, success: bool, **user_identifiers: str | int) -> bool:
        """Record a login attempt; see :func:`sqreen.auth_track`."""
        success = as_bool(success, "success", self._rules)
        identifiers = self._identifiers(user_identifiers, "auth_track")
        if identifiers is None:
            return False
        options = {"properties": {"success": success}, "user_identifiers": identifiers}
        recorded = self._record("sqreen.auth_track", options)
        self._upkeep.security_event()
        if success:
            self._attach(identifiers)
        return recorded

    def signup_track(self, **user_identifiers: str | int) -> bool:
        """Record a signup; see :func:`sqreen.signup_track`."""
        identifiers = self._identifiers(user_identifiers, "signup_track")
        if identifiers is None:
            return False
        recorded = self._record("sqreen.signup_track", {"user_identifiers": identifiers})
        self._upkeep.security_event()
        self._attach(identifiers)
        return recorded

    def screen(self, request: RequestContext) -> Action | None:
        """The IP security response for a request that is starting, if any (recorded as its
        ``sq.action.*`` event): the middleware then answers it instead of the application."""
        return self._responder.screen(request, lambda: self._requests.client_ip(request.capture))

    @property
    def enforcer(self) -> Enforcer:
        """The security responses this process enforces, compiled and kept fresh."""
        return self._responder.enforcer

    def _attach(
        self, identifiers: dict[str, str | int], traits: dict[str, Any] | None = None
    ) -> bool:
        """Make ``identifiers`` the current request's user (False outside a request); raise
        UserBlocked when a security response names that user."""
        request = current_request()
        if request is None:
            return False
        request.user = identifiers
        if traits is not None:
            request.traits = traits
        self._responder.check_user(request, identifiers)
        return True

    def _identifiers(
        self, user_identifiers: dict[str, str | int], what: str
    ) -> dict[str, str | int] | None:
        """The helpers' identifiers, checked; None (warned) when there are none, which the
        agent ignored silently."""
        if not user_identifiers:
            relax(
                self._rules,
                f"{what}_without_identifiers",
                f"{what} needs at least one user identifier, such as email='...'; "
                "nothing was recorded",
            )
            return None
        return check_identifiers(user_identifiers, f"{what}'s user identifiers")

    def start(self) -> None:
        """Open (and if needed migrate) the spool, and start the background threads, now:
        ``track()`` would otherwise do both on first use. Storage trouble is counted and logged,
        as in ``track()``, never raised: the spool may become usable later."""
        try:
            self._store.open()
        except storage_errors() as exc:
            self._storage_failed(exc, "start")
        build("sqreen.start", None, rules=self._rules)  # the first track()'s one-off costs, now
        self._upkeep.start()

    def _forked(self) -> None:
        """In a child after fork(): its first track() starts the threads anew."""
        self._running = False

    def _after_commit(self, inserted: int) -> bool:
        """The store's hook (see :meth:`.upkeep.Upkeep.after_commit`)."""
        return self._upkeep.after_commit(inserted)

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver pending events now, waiting at most ``timeout`` seconds.

        An explicit flush does not wait for the backoff stored on failed rows.
        """
        return self._upkeep.flush(timeout, ignore_backoff=True)

    def stats(self) -> Stats:
        """What the spool holds and has done, for metrics (see :mod:`sqreen.stats`): every
        process on the spool sees the same. Storage trouble is raised: a metrics scrape should
        fail visibly."""
        with contextlib.suppress(*storage_errors()):  # this process's failures, saved first
            self._upkeep.save_health()
        return read_stats(self._store)

    def health(self) -> HealthReport:
        """Storage and delivery failures counted by kind in this process, and the last error."""
        return self._health.report()

    def close(self, timeout: float | None = None) -> FlushResult:
        """Stop the background thread, flush what this process tracked, close the spool.

        Everything is bounded by ``timeout`` (default: ``shutdown_timeout``); what is not
        delivered in time stays in the spool for the next start.
        """
        budget = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        self._upkeep.stop(deadline)
        self._responder.report(everything=True)  # recorded before the exit's flush
        result = FlushResult()
        if self._tracked and self._flusher is not None:
            remaining = max(0.0, deadline - time.monotonic())
            result = self._upkeep.flush(remaining, ignore_backoff=False)
        with contextlib.suppress(*storage_errors()):  # already counted and logged
            self._upkeep.save_health()
        if self._flusher is not None:
            self._flusher.close()
        self._responder.close()
        self._store.close()
        return result

    def _storage_failed(self, exc: BaseException, what: str) -> None:
        kind, error = record_failure(self._health, exc, what)
        if self.settings.strict and what == "track":
            if isinstance(exc, SpoolError):
                raise exc
            raise SpoolError(f"{what} failed ({kind}): {error}") from exc


@atexit.register
def _stop_all() -> None:
    for spooler in list(_live):
        spooler.close()
