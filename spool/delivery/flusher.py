"""Delivery: claim batches from the spool, post them with retries, settle each row.

At least once: a row is deleted (or marked delivered) only after the collector acknowledged it,
so a crash between the POST and the settle sends it again, under the same event id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from .. import clock
from ..config import Settings
from ..event import new_id
from ..health import Health
from ..security.action_store import (
    COLLECTOR,
    load_urgent,
    read_actions,
    replace_collector_actions,
    replace_urgent,
)
from ..storage.outbox import Batch, Outbox, owner_name
from ..urls import mask_url
from .result import FlushResult
from .sink import BISECT_STATUSES, SPLIT_STATUSES, Reply, Sink

log = logging.getLogger("sqreen.spool")

CONFIG_STATUSES = frozenset({401, 403, 404})
# Retries inside one flush stop early enough to settle the rows before their lease runs out.
LEASE_SHARE = 0.8


class Flusher:
    """Drains one spool to its collector."""

    def __init__(self, outbox: Outbox, settings: Settings, transport: Sink, health: Health):
        self._outbox = outbox
        self._settings = settings
        self._transport = transport
        self._health = health
        self._interrupt = threading.Event()
        # Called after the collector's answer changed the stored security responses.
        self.on_actions: Callable[[], None] | None = None
        # The event names the collector's playbooks watch (its last answer's, else the
        # spool's, read at the first delivery): track() wakes an early delivery for them.
        self.urgent: frozenset[str] = frozenset()
        self._urgent_read = False
        self._retry_wait = wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 0.5)

    @property
    def destination(self) -> str:
        """Where this flusher delivers, for people: the URL masked, or the sink's class."""
        if self._settings.url is not None and type(self._transport).__module__.startswith(
            "sqreen.delivery."
        ):
            return mask_url(self._settings.url)
        return type(self._transport).__name__

    def flush(
        self,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        progress: Callable[[FlushResult], None] | None = None,
    ) -> FlushResult:
        """Deliver due pending events until none is left, the collector fails, or time is up.

        ``progress`` is called with the running totals after each batch.
        """
        settings = self._settings
        if not self._urgent_read:
            self.urgent, self._urgent_read = load_urgent(self._outbox.store), True
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        owner = owner_name()
        self._outbox.release_dead(clock.now())
        total = FlushResult()
        claimed = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    total += FlushResult(timed_out=True)
                    break
                batch, dropped, more = self._outbox.claim(
                    owner,
                    settings.batch_size,
                    settings.max_batch_bytes,
                    settings.lease,
                    clock.now(),
                    ignore_backoff,
                )
                if not batch:
                    break
                claimed = True
                until = time.monotonic() + min(remaining, settings.lease * LEASE_SHARE)
                result = self._deliver(batch, dropped, until)
                total += result
                self._outbox.store.bulk_committed()
                if progress is not None:
                    progress(total)
                if result.failed or result.timed_out:
                    break  # the collector is failing: the rest waits for the next heartbeat
                if not more:
                    break  # caught up: what arrived since is the next heartbeat's
        finally:
            if claimed:  # what the last batch left pending (failed, out of time) is free again
                self._outbox.release(owner)
        return total + FlushResult(pending=self._outbox.store.count_pending())

    def close(self) -> None:
        """Close the sink's connection (at exit)."""
        self._transport.close()

    def interrupt(self) -> None:
        """Cut short any retry wait in progress (at shutdown)."""
        self._interrupt.set()

    def _sleep(self, seconds: float) -> None:
        self._interrupt.wait(seconds)

    def _deliver(self, batch: Batch, dropped: Mapping[str, int], until: float) -> FlushResult:
        if time.monotonic() >= until:
            return FlushResult(timed_out=True)  # the rows stay pending, the claim is released
        reply = self._post(batch, dropped, until)
        now = clock.now()
        attempt = {
            "at": now,
            "events": len(batch),
            "outcome": "delivered" if reply.ok else "failed",
            "status": reply.status,
            "error": None if reply.ok else reply.describe(),
        }
        if reply.ok:
            return self._answered(batch, dropped, reply, now, attempt)
        halve = reply.status in SPLIT_STATUSES | BISECT_STATUSES
        if halve or (reply.unread and len(batch) > 1):
            if len(batch) == 1:
                self._outbox.settle((), now, False, {}, {batch.seqs[0]: reply.describe()}, attempt)
                return FlushResult(rejected=1)
            # Halve: a 413 batch until it fits, a 400 batch down to the events at fault, a batch
            # whose answer was too large to read until the answers fit.
            half = len(batch) // 2
            first = self._deliver(batch[:half], dropped, until)
            return first + self._deliver(batch[half:], {}, until)
        if reply.status in CONFIG_STATUSES:
            self._health.record("collector_config", reply.describe(), "delivery")
        else:
            self._health.record("collector_unavailable", reply.describe(), "delivery")
        not_before = now + reply.retry_after if reply.retry_after else 0.0
        self._outbox.failed(batch.seqs, reply.describe(), now, not_before, attempt)
        return FlushResult(failed=len(batch))

    def _answered(
        self,
        batch: Batch,
        dropped: Mapping[str, int],
        reply: Reply,
        now: float,
        attempt: dict[str, Any],
    ) -> FlushResult:
        """Settle a batch answered 2xx: accepted, refused by name, or not acknowledged."""
        named, unsettled = reply.rejected, reply.unsettled
        pairs = list(zip(batch.seqs, batch.ids, strict=True))
        refused = {seq: named[i] for seq, i in pairs if i in named} if named else {}
        waiting = [seq for seq, i in pairs if i in unsettled] if unsettled else []
        accepted = batch.seqs
        if refused or waiting:
            accepted = [s for s in batch.seqs if s not in refused and s not in waiting]
        if reply.actions is not None:  # first: in force before the batch reads as settled
            self._store_actions(reply.actions, now)
        if reply.urgent is not None and frozenset(reply.urgent) != self.urgent:
            self.urgent = frozenset(reply.urgent)
            replace_urgent(self._outbox.store, reply.urgent)
        keep = self._settings.keep_delivered > 0
        self._outbox.settle(accepted, now, keep, dropped, refused, attempt)
        if waiting:  # no acknowledgement came back for these: they are retried later
            why = f"{len(waiting)} of {len(batch)} events unacknowledged: {reply.error}"
            self._health.record("collector_unavailable", why, "delivery")
            self._outbox.failed(waiting, why, now, 0.0, {**attempt, "outcome": "partial"})
        return FlushResult(delivered=len(accepted), rejected=len(refused), failed=len(waiting))

    def _store_actions(self, documents: list[Any], now: float) -> None:
        """The collector's answer carried its complete list of security responses."""
        widest = self._settings.widest_block
        actions = read_actions(documents, now, self._health.warn, COLLECTOR, widest)
        changed = replace_collector_actions(self._outbox.store, actions, now)
        if changed and self.on_actions is not None:
            self.on_actions()  # compiles the new list here, on the delivery thread

    def _post(self, batch: Batch, dropped: Mapping[str, int], until: float) -> Reply:
        payloads = batch.payloads
        batch_id = new_id()

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None
            reply: Reply = state.outcome.result()
            return reply.retry_after if reply.retry_after is not None else self._retry_wait(state)

        def attempt() -> Reply:
            remaining = until - time.monotonic()
            return self._transport.post(batch_id, batch.ids, payloads, dropped, remaining)

        retrying = Retrying(
            retry=retry_if_result(lambda reply: reply.retryable),
            stop=stop_after_attempt(self._settings.retry_attempts)
            | stop_before_delay(max(0.0, until - time.monotonic())),
            wait=wait,
            sleep=self._sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        reply: Reply = retrying(attempt)
        return reply
