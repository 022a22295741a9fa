"""The collector tier: ``sqreen-spool collect --forward nats://...``.

A small ASGI app, served by uvicorn, that takes the wire format's batches from applications
that keep posting HTTP and publishes every event into NATS JetStream. It answers 2xx only once
the stream acknowledged each accepted event (those it refused for good are in the ``rejected``
list, with the events that fail the wire format's checks); when the stream does not acknowledge
them all it answers 503 with ``Retry-After``, and the application retries the batch (the stream
drops the events it already holds by their ``Nats-Msg-Id``). It keeps nothing on disk: any
number of them can run behind a load balancer. The playbook, when enabled, keeps its window in
memory, per collector process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sqreen.config import Settings
from sqreen.delivery.jetstream import Publisher
from sqreen.wire import MAX_BODY, TooLarge, check_batch, decode, parse_batch

from .playbook import Playbook, Rules
from .reference import MAX_CONNECTIONS, READ_DEADLINE, authorized

# Read by each worker process: uvicorn starts them from an import string.
RULES_VARIABLE = "SQREEN_COLLECT_PLAYBOOK"
TOKEN_VARIABLE = "SQREEN_COLLECT_TOKEN"
RETRY_AFTER = "1"  # seconds: a stream back from an election or a restart takes about that

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Forwarder:
    """The ASGI app: POST a batch to any path."""

    def __init__(
        self, settings: Settings, playbook: Playbook | None = None, token: str | None = None
    ) -> None:
        self._publisher = Publisher(settings, "sqreen-spool-collector")
        self._timeout = settings.http_timeout
        self._playbook = playbook
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, answer, headers = await self._answer(scope, receive)
        head = [(b"content-type", b"application/json"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    async def _answer(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        if scope["method"] != "POST":
            return 405, {"error": "POST batches to this URL"}, []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not authorized(self._token, headers.get("authorization")):
            return 401, {"error": "a valid token is required (Authorization: Bearer)"}, []
        try:
            body = await _body(receive, headers.get("content-length"))
            batch = parse_batch(decode(headers.get("content-encoding"), body))
        except TooLarge as exc:
            return 413, {"error": str(exc)}, []
        except ValueError as exc:
            return 400, {"error": str(exc)}, []
        problem, rejected = check_batch(batch)
        if problem is not None:
            return 400, {"error": problem}, []
        return await self._forward(batch, rejected)

    async def _forward(
        self, batch: dict[str, Any], rejected: dict[str, str]
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
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
        answer: dict[str, Any] = {"accepted": len(events) - len(reply.rejected)}
        if self._playbook is not None:
            answer["actions"] = self._playbook.answer(
                [e for e in events if e["id"] not in rejected]
            )
        if rejected:
            answer["rejected"] = [{"id": i, "reason": why} for i, why in rejected.items()]
        return 200, answer, []

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._publisher.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


_RETRY = [(b"retry-after", RETRY_AFTER.encode())]


async def _body(receive: Receive, declared: str | None) -> bytes:
    """The request's body, refused past MAX_BODY whether declared or streamed."""
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise TooLarge(f"a body must be 0 to {MAX_BODY} bytes")
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise TooLarge(f"a body must be 0 to {MAX_BODY} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def create_app() -> Forwarder:
    """The app of one worker process, configured from the environment (``SQREEN_URL`` and the
    sink's settings, and the playbook's rules that :func:`serve` put there)."""
    rules = os.environ.get(RULES_VARIABLE)
    playbook = Playbook(Rules(**orjson.loads(rules))) if rules else None
    return Forwarder(Settings.resolve(), playbook, os.environ.get(TOKEN_VARIABLE))


def serve(
    forward: str, host: str, port: int, workers: int, rules: Rules | None, token: str | None
) -> None:
    """Serve the tier under uvicorn until stopped (SIGTERM, Ctrl-C)."""
    os.environ["SQREEN_URL"] = forward
    if rules is not None:
        os.environ[RULES_VARIABLE] = orjson.dumps(asdict(rules)).decode()
    if token is not None:
        os.environ[TOKEN_VARIABLE] = token
    Settings.resolve()  # a bad setting fails here, once, not in every worker
    uvicorn.run(
        "sqreen.cli.forward:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        timeout_keep_alive=75,  # longer than the flusher's keep-alive pool keeps a connection
        access_log=False,
        http=ReadDeadline,
        limit_concurrency=MAX_CONNECTIONS,
    )


class ReadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request to arrive whole.

    uvicorn times out an idle keep-alive connection, but not one that trickles its headers or
    body (slowloris): a few hundred of those took the tier down. Here a connection has
    READ_DEADLINE seconds from when it opens, or from its last response, to have sent a whole
    request; one still waiting for the client then is closed. The application's own time is
    not counted."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(READ_DEADLINE, self._expired)

    def _expired(self) -> None:
        cycle = self.cycle
        waiting = cycle is None or cycle.response_complete or cycle.more_body
        if waiting and not self.transport.is_closing():
            self.transport.close()
