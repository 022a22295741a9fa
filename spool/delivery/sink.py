"""The seam between the flusher and where its batches go.

A sink is any object with a ``url`` (what logs and ``inspect`` show, credentials masked), a
``post`` that delivers one batch and answers with a :class:`Reply`, and a ``close``. We ship
three: the HTTP collector (:class:`sqreen.delivery.http.Transport`), NATS JetStream
(:class:`sqreen.delivery.jetstream.JetStreamSink`) and :class:`MemorySink`, for tests and for
applications that hand events to a queue of their own. ``Spooler(sink=...)`` takes any of them.

A sink never raises for trouble on its side of the wire: it answers a Reply with no status (or
a retryable one) and the flusher retries, backs off and keeps the events. The flusher settles
what a 2xx Reply does not name in ``rejected`` or ``unsettled``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
SPLIT_STATUSES = frozenset({413})
BISECT_STATUSES = frozenset({400, 422})


@dataclass(frozen=True)
class Reply:
    """What came back for one POST: a status, or an error when no response came."""

    status: int | None
    error: str = ""
    retry_after: float | None = None
    rejected: Mapping[str, str] = field(default_factory=dict)
    # The collector's complete list of security responses, when its answer carries one.
    actions: list[Any] | None = None
    # Events of an answered batch that were not acknowledged (the JetStream sink: no PubAck
    # came back for them): they stay pending, with the usual retry state.
    unsettled: frozenset[str] = frozenset()
    # The answer came but was too large to read whole: what it says of the batch is unknown.
    unread: bool = False
    # The event names the collector's playbooks watch, when its answer says: delivered early.
    urgent: list[str] | None = None
    # What answered, for describe(): "HTTP", or "NATS" (its status is the HTTP one it maps to,
    # for the flusher's retry and bisection rules).
    protocol: str = "HTTP"

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth another try soon: no response at all, a timeout, 408, 429 or 5xx."""
        return self.status is None or self.status in RETRYABLE_STATUSES

    def describe(self) -> str:
        """For people, in the terms of the sink's protocol (a JetStream answer is no HTTP one,
        whatever status it maps to)."""
        if self.status is None:
            return self.error
        if self.protocol != "HTTP":
            return f"{self.protocol}: {self.error}"
        return f"HTTP {self.status} {self.error}".strip()


class Sink(Protocol):
    """Where batches go."""

    url: str

    def post(
        self,
        batch_id: str,
        ids: Sequence[str],
        payloads: Sequence[bytes],
        dropped: Mapping[str, int],
        timeout: float | None = None,
    ) -> Reply:
        """Deliver one batch within ``timeout`` seconds: the events' ``ids`` and their stored
        JSON ``payloads`` (in the same order), and the drops to report. ``batch_id`` is the
        same for every retry of the batch (an idempotency key)."""
        ...

    def close(self) -> None:
        """Release connections (at exit)."""
        ...


def accept_all(batch: dict[str, Any]) -> Reply:
    return Reply(200)


class MemorySink:
    """A sink that keeps every batch it is given, decoded, and answers as ``answer`` says
    (by default: every event accepted)."""

    url = "memory://"

    def __init__(self, answer: Callable[[dict[str, Any]], Reply] = accept_all) -> None:
        self.answer = answer
        self.batches: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def post(
        self,
        batch_id: str,
        ids: Sequence[str],
        payloads: Sequence[bytes],
        dropped: Mapping[str, int],
        timeout: float | None = None,
    ) -> Reply:
        batch = {
            "batch_id": batch_id,
            "events": [orjson.loads(payload) for payload in payloads],
            "dropped": dict(dropped),
        }
        reply = self.answer(batch)
        if reply.ok:
            with self._lock:
                self.batches.append(batch)
        return reply

    def events(self) -> list[dict[str, Any]]:
        """Every event of the batches answered 2xx, in the order they came (rejected ones too:
        the answer decides which were refused)."""
        with self._lock:
            return [event for batch in self.batches for event in batch["events"]]

    def close(self) -> None:
        pass
