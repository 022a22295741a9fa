"""The public ``Spooler`` object: one spool file and the work around it."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
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
from .health import Health, HealthReport
from .request.context import RequestBuilder, RequestContext
from .request.context import current as current_request
from .request.scrub import Scrubber
from .security.actions import Action
from .security.enforcer import Enforcer
from .security.responder import Responder
from .storage.bound import Bound, log_drops
from .storage.counters import add, note
from .storage.failures import classify, describe, storage_errors
from .storage.outbox import Outbox
from .storage.prune import drop_old
from .storage.store import Store
from .worker import Worker

log = logging.getLogger("sqreen.spool")

HEARTBEAT_JITTER = 0.1
SECURITY_WAKE_EVERY = 0.2

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
        self.settings = Settings.resolve(settings)
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
        self._outbox = Outbox(self._store)
        self._flusher = make_flusher(self.settings, self._outbox, self._health, sink)
        self._bound = Bound(self._store, self.settings.max_bytes, self._health)
        self._responder = Responder(self.settings.path, self._record)
        if self._flusher is not None:
            self._flusher.on_actions = self.enforcer.invalidate
        # Two threads, so that the spool's upkeep never waits behind the network: maintenance
        # (checkpoints, the bound, pruning, saving counters) and delivery (the heartbeat's flush).
        name = f"sqreen-spool:{self.settings.path.name}"
        self._worker = Worker(f"{name}:maintenance", self._maintain)
        self._delivery = (
            None if self._flusher is None else Worker(f"{name}:delivery", self._deliver)
        )
        self._tracked = False
        self._wake_at = self._store.checkpoint_every  # the commit count that wakes maintenance
        self._next_prune = 0.0
        self._drained_at = 0
        self._warned_no_url = False
        self._security_due = False  # a login or signup waits for an early delivery
        self._delivered_at = -SECURITY_WAKE_EVERY  # when the last delivery began (monotonic)
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
        try:
            maintenance_due = self._store.insert(event)
        except storage_errors() as exc:
            self._storage_failed(exc, "track")
            return False
        self._tracked = True
        self.start()
        if maintenance_due:
            self._worker.wake()
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
        self._security_event()
        if success:
            self._attach(identifiers)
        return recorded

    def signup_track(self, **user_identifiers: str | int) -> bool:
        """Record a signup; see :func:`sqreen.signup_track`."""
        identifiers = self._identifiers(user_identifiers, "signup_track")
        if identifiers is None:
            return False
        recorded = self._record("sqreen.signup_track", {"user_identifiers": identifiers})
        self._security_event()
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

    def _security_event(self) -> None:
        """A login or signup was recorded: deliver it soon, so that a collector's response to
        it (block this user) comes back within a second or two, not a heartbeat. The delivery
        thread starts such early deliveries at most once per SECURITY_WAKE_EVERY: a login storm
        is not a POST per login."""
        if self._delivery is not None:
            self._security_due = True
            self._delivery.wake()

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
        """Start the background threads now (``track()`` starts them on first use)."""
        self._worker.start()
        if self._delivery is not None:
            self._delivery.start()

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver pending events now, waiting at most ``timeout`` seconds.

        An explicit flush does not wait for the backoff stored on failed rows.
        """
        return self._flush(timeout, ignore_backoff=True)

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
        if self._flusher is not None:
            self._flusher.interrupt()
        if self._delivery is not None:
            self._delivery.stop(budget)
        self._worker.stop(max(0.0, deadline - time.monotonic()))
        self._responder.report(everything=True)  # recorded before the exit's flush
        result = FlushResult()
        if self._tracked and self._flusher is not None:
            result = self._flush(max(0.0, deadline - time.monotonic()), ignore_backoff=False)
        with contextlib.suppress(*storage_errors()):  # already counted and logged
            self._save_health()
        if self._flusher is not None:
            self._flusher.close()
        self._responder.close()
        self._store.close()
        return result

    def _flush(self, timeout: float | None, ignore_backoff: bool) -> FlushResult:
        try:
            if self._flusher is None:
                self._warn_no_url()
                return FlushResult(pending=self._store.count_pending())
            return self._flusher.flush(timeout, ignore_backoff)
        except storage_errors() as exc:
            self._storage_failed(exc, "flush")
            return FlushResult()

    def _after_commit(self, inserted: int) -> bool:
        """The store's one hook, after each commit: the bound looks at the files (and relieves
        them at once when a burst outran the maintenance thread); True when maintenance is
        due."""
        return self._bound.watch(inserted) or inserted >= self._wake_at

    def _maintain(self) -> float | None:
        """The maintenance thread's work: checkpoint, keep the spool bounded, save the
        counters; every heartbeat, drop what is too old. It wakes the delivery thread early
        once a full batch is pending."""
        store, settings = self._store, self.settings
        # Run again after the next checkpoint's worth of commits, or as soon as a full batch is
        # pending since the last delivery began, whichever comes first.
        ahead = store.checkpoint_every
        if self._delivery is not None:
            ahead = min(ahead, settings.batch_size - (store.inserted - self._drained_at))
        self._wake_at = store.inserted + max(1, ahead)
        now = time.monotonic()
        try:
            carried = store.reopen_if_replaced()
            if carried is not None:
                self._health.record(
                    "spool_replaced",
                    f"{settings.path} was deleted or replaced while open; started a fresh spool "
                    f"there with the {carried} pending events this process still saw",
                    "maintenance",
                )
            if now >= self._next_prune:
                self._next_prune = now + settings.heartbeat_delay * _jitter()
                log_drops({"age": drop_old(store, settings)})
                if self._flusher is None:
                    self._warn_no_url()
            self._bound.keep()
            self._save_health()
            self._responder.report()
        except storage_errors() as exc:
            self._storage_failed(exc, "maintenance")
        if self._delivery is not None and store.inserted - self._drained_at >= settings.batch_size:
            self._drained_at = store.inserted  # counted from now: the delivery drains it all
            self._delivery.wake()
        return max(0.0, self._next_prune - time.monotonic())

    def _deliver(self) -> float | None:
        """The delivery thread's work: drain the spool, at once and then every heartbeat (or
        when woken because a full batch is pending)."""
        assert self._flusher is not None
        started = time.monotonic()
        if self._security_due and started - self._delivered_at < SECURITY_WAKE_EVERY:
            return self._delivered_at + SECURITY_WAKE_EVERY - started  # then run at once
        self._security_due = False
        self._delivered_at = started
        delay = self.settings.heartbeat_delay * _jitter()
        try:
            self._flusher.flush(self.settings.lease * 2)
        except storage_errors() as exc:
            self._storage_failed(exc, "delivery")
        return delay

    def _save_health(self) -> None:
        """Add this process's new failures to the spool's counters, where `inspect` shows them
        (a process's own counts die with it)."""
        unsaved = self._health.unsaved()
        if not unsaved:
            return
        report = self._health.report()
        with self._store.write() as raw:
            for kind, n in unsaved.items():
                add(raw, f"failed.{kind}", n)
            last = {"at": report.last_error_at, "error": report.last_error, "pid": os.getpid()}
            note(raw, "last_failure", last)
        self._health.saved(unsaved)

    def _warn_no_url(self) -> None:
        if not self._warned_no_url:
            self._warned_no_url = True
            log.warning(
                "sqreen spool: SQREEN_URL is not set; events stay in %s (pruned by its limits) "
                "and nothing is delivered",
                self.settings.path,
            )

    def _storage_failed(self, exc: BaseException, what: str) -> None:
        kind, error = classify(exc), describe(exc)
        self._health.record(kind, error, what)
        if self.settings.strict and what == "track":
            if isinstance(exc, SpoolError):
                raise exc
            raise SpoolError(f"{what} failed ({kind}): {error}") from exc


def _jitter() -> float:
    return random.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)


@atexit.register
def _stop_all() -> None:
    for spooler in list(_live):
        spooler.close()
