"""The collector tier: ``sqreen-spool collect --forward nats://...``.

A small ASGI app, served by uvicorn, that takes the wire format's batches from applications
that keep posting HTTP and publishes every event into NATS JetStream. It answers 2xx only once
the stream acknowledged each accepted event (those it refused for good are in the ``rejected``
list, with the events that fail the wire format's checks); when the stream does not acknowledge
them all it answers 503 with ``Retry-After``, and the application retries the batch (the stream
drops the events it already holds by their ``Nats-Msg-Id``). It keeps nothing on disk: any
number of them can run behind a load balancer. The playbooks, when enabled, keep their state in
memory, per collector process.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

import orjson

from sqreen.automation import state
from sqreen.automation.engine import Engine
from sqreen.automation.playbooks import read
from sqreen.config import Settings
from sqreen.delivery.jetstream import Publisher
from sqreen.wire import add_actions, check_batch, room_for_actions

from .asgi import TOKEN_VARIABLE, BatchApp, Result, playbooks_from_environment, run

RETRY_AFTER = "1"  # seconds: a stream back from an election or a restart takes about that
_RETRY = [(b"retry-after", RETRY_AFTER.encode())]


class Forwarder(BatchApp):
    """The ASGI app: POST a batch to any path."""

    def __init__(self, settings: Settings, playbooks: Any = None, token: str | None = None) -> None:
        super().__init__(token)
        self._publisher = Publisher(settings, "sqreen-spool-collector")
        self._timeout = settings.http_timeout
        self._decider = None if playbooks is None else _Decider(Engine(read(playbooks)))

    async def handle(self, batch: Any, headers: dict[str, str], path: str) -> Result:
        problem, rejected = check_batch(batch)
        if problem is not None:
            return 400, {"error": problem}, []
        return await self._forward(batch, rejected)

    async def _forward(self, batch: dict[str, Any], rejected: dict[str, str]) -> Result:
        """Publish a checked batch's valid events; 2xx once the stream took them all."""
        events = [e for e in batch["events"] if e["id"] not in rejected]
        reply = await self._publisher.publish(
            batch["batch_id"],
            [e["id"] for e in events],
            [orjson.dumps(e) for e in events],
            batch.get("dropped") or {},
            self._timeout,
        )
        if not reply.ok or reply.unsettled:
            why = reply.describe() if not reply.ok else f"{len(reply.unsettled)} unacknowledged"
            return 503, {"error": f"the stream did not take the batch: {why}"}, _RETRY
        rejected.update(reply.rejected)
        answer: dict[str, Any] = {}
        if rejected:
            answer["rejected"] = [{"id": i, "reason": why} for i, why in rejected.items()]
        if self._decider is not None:
            answer["urgent"] = self._decider.urgent
            kept = [e for e in events if e["id"] not in rejected]
            add_actions(answer, *self._decider.decide(kept, room_for_actions(answer)))
        answer["accepted"] = len(events) - len(reply.rejected)
        return 200, answer, []

    async def shutdown(self) -> None:
        await self._publisher.close()


class _Decider:
    """The playbooks of one worker of the tier: their state in this process's memory (the
    tier keeps nothing on disk), so each worker counts what it receives."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            ":memory:", isolation_level=None, check_same_thread=False
        )
        state.create(self._connection)

    @property
    def urgent(self) -> list[str]:
        return self._engine.playbooks.watched

    def decide(self, events: list[dict[str, Any]], budget: int) -> tuple[list[Any], int]:
        """Run the playbooks over a batch's events; the actions in force that fit ``budget``
        bytes, and how many did not."""
        with self._lock:
            self._connection.execute("BEGIN")
            _, actions, omitted = self._engine.answer(self._connection, events, time.time(), budget)
            self._connection.execute("COMMIT")
        return actions, omitted


def create_app() -> Forwarder:
    """The app of one worker process, configured from the environment (``SQREEN_URL`` and the
    sink's settings, and the playbooks that :func:`serve` put there)."""
    return Forwarder(
        Settings.resolve(), playbooks_from_environment(), os.environ.get(TOKEN_VARIABLE)
    )


def serve(forward: str, host: str, port: int, workers: int, spec: Any, token: str | None) -> None:
    """Serve the tier under uvicorn until stopped (SIGTERM, Ctrl-C)."""
    os.environ["SQREEN_URL"] = forward
    Settings.resolve()  # a bad setting fails here, once, not in every worker
    run("sqreen.cli.forward:create_app", host, port, workers, spec, token)
