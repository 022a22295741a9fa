"""The spool's background work, on two threads so that keeping the spool healthy never waits
behind the network: maintenance (checkpoints, the size bound, pruning by age, saving counters,
reporting tallied security events) and delivery (the heartbeat's flush, or an early one after
a login). Both start lazily, restart after ``fork()`` and stop within a bounded wait (see
:mod:`.worker`); the store's after-commit hook wakes them when work is due.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import TYPE_CHECKING

from . import clock, processes
from .config import Settings
from .delivery.result import FlushResult
from .health import Health
from .security.responder import Responder
from .storage.bound import Bound, log_drops
from .storage.counters import add, note
from .storage.failures import record_failure, storage_errors
from .storage.packing import TRAIN_AFTER, keep_packed
from .storage.prune import drop_old
from .storage.store import Store
from .worker import Worker

if TYPE_CHECKING:
    from .delivery.flusher import Flusher

log = logging.getLogger("sqreen.spool")

HEARTBEAT_JITTER = 0.1
SECURITY_WAKE_EVERY = 0.2


class Upkeep:
    """The background work of one spooler."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        flusher: Flusher | None,
        health: Health,
        responder: Responder,
    ) -> None:
        self.settings = settings
        self._store = store
        self._flusher = flusher
        self._health = health
        self._responder = responder
        self.bound = Bound(store, settings.max_bytes, health)
        name = f"sqreen-spool:{settings.path.name}"
        self._worker = Worker(f"{name}:maintenance", self._maintain)
        self._delivery = None if flusher is None else Worker(f"{name}:delivery", self._deliver)
        # The commit count that wakes maintenance; first soon enough to train the spool's
        # dictionary before many rows are stored as sent (see sqreen.storage.packing).
        self._wake_at = min(store.checkpoint_every, TRAIN_AFTER)
        self._next_prune = 0.0
        self._drained_at = 0
        self._warned_no_url = False
        self._security_due = False  # a login or signup waits for an early delivery
        self._last_delivery: dict[str, object] | None = None  # this process's, for inspect
        self._next_delivery: float | None = None
        self._delivered_at = -SECURITY_WAKE_EVERY  # when the last delivery began (monotonic)

    def after_commit(self, inserted: int) -> bool:
        """The store's one hook, after each commit: the bound looks at the files (and relieves
        them at once when a burst outran the maintenance thread); True when maintenance is
        due."""
        return self.bound.watch(inserted) or inserted >= self._wake_at

    def start(self) -> None:
        """Start the background threads now (``track()`` starts them on first use)."""
        self._worker.start()
        if self._delivery is not None:
            self._delivery.start()

    def wake(self) -> None:
        """Maintenance is due: wake its thread."""
        self._worker.wake()

    def security_event(self) -> None:
        """A login or signup was recorded: deliver it soon, so that a collector's response to
        it (block this user) comes back within a second or two, not a heartbeat. The delivery
        thread starts such early deliveries at most once per SECURITY_WAKE_EVERY: a login storm
        is not a POST per login."""
        if self._delivery is not None:
            self._security_due = True
            self._delivery.wake()

    def stop(self, deadline: float) -> None:
        """Stop both threads, each waiting at most until ``deadline`` (monotonic)."""
        if self._flusher is not None:
            self._flusher.interrupt()
        if self._delivery is not None:
            self._delivery.stop(max(0.0, deadline - time.monotonic()))
        self._worker.stop(max(0.0, deadline - time.monotonic()))

    def flush(self, timeout: float | None, ignore_backoff: bool) -> FlushResult:
        try:
            if self._flusher is None:
                self._warn_no_url()
                return FlushResult(pending=self._store.count_pending())
            return self._flusher.flush(timeout, ignore_backoff)
        except storage_errors() as exc:
            record_failure(self._health, exc, "flush")
            return FlushResult()

    def save_health(self) -> None:
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
            beat = now >= self._next_prune
            if beat:
                self._next_prune = now + settings.heartbeat_delay * _jitter()
                log_drops({"age": drop_old(store, settings)})
                if self._flusher is None:
                    self._warn_no_url()
            keep_packed(store)  # before the bound: packed rows take a fifth of the room
            self.bound.keep()
            self.save_health()
            if beat:
                # What this process is doing, for inspect. Written after the checkpoint: the
                # first write after one starts the WAL over, and this thread pays for it rather
                # than the next track().
                with store.write() as raw:
                    processes.record(raw, self._status())
            self._responder.report()
        except storage_errors() as exc:
            record_failure(self._health, exc, "maintenance")
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
        outcome = "failed"
        try:
            done = self._flusher.flush(self.settings.lease * 2)
            outcome = f"{done.delivered} delivered, {done.failed} failed, {done.pending} pending"
        except storage_errors() as exc:
            record_failure(self._health, exc, "delivery")
        self._last_delivery = {"at": clock.now(), "outcome": outcome}
        self._next_delivery = clock.now() + delay
        return delay

    def _status(self) -> dict[str, object]:
        """This process's note (see :mod:`.processes`)."""
        flusher = self._flusher
        return {
            "destination": None if flusher is None else flusher.destination,
            "heartbeat": self.settings.heartbeat_delay,
            "last_delivery": self._last_delivery,
            "next_delivery_at": self._next_delivery,
        }

    def _warn_no_url(self) -> None:
        if not self._warned_no_url:
            self._warned_no_url = True
            log.warning(
                "sqreen spool: SQREEN_URL is not set; events stay in %s (pruned by its limits) "
                "and nothing is delivered",
                self.settings.path,
            )


def _jitter() -> float:
    return random.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
