"""The collector's ASGI side, under uvicorn with ``--workers``: what every batch app shares.

:class:`BatchApp` reads a POST (the token, a bounded body, gzip, the JSON's size) and hands the
parsed batch to its subclass: :class:`sqreen.cli.forward.Forwarder` (into JetStream) or
:class:`sqreen.cli.workers.StoreApp` (the event store). :func:`run` serves one under uvicorn,
each worker process making its app from an import string and the environment.
"""

from __future__ import annotations

import abc
import asyncio
import os
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sqreen.asgi import BodyTooLarge, Receive, Scope, Send, read_body
from sqreen.wire import MAX_BODY, TooLarge, decode, parse_batch

from .reference import MAX_CONNECTIONS, READ_DEADLINE, authorized

# Read by each worker process: uvicorn starts them from an import string.
PLAYBOOKS_VARIABLE = "SQREEN_COLLECT_PLAYBOOKS"
TOKEN_VARIABLE = "SQREEN_COLLECT_TOKEN"

Result = tuple[int, dict[str, Any] | bytes, list[tuple[bytes, bytes]]]


class BatchApp(abc.ABC):
    """An ASGI app taking the wire format's batches, POSTed to any path."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    @abc.abstractmethod
    async def handle(self, batch: Any, headers: dict[str, str], path: str) -> Result:
        """The answer to a parsed batch (into JetStream, or into the event store)."""

    async def shutdown(self) -> None:  # noqa: B027 (a hook: most apps hold nothing)
        """Release what the app holds, when its worker stops."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, answer, headers = await self._answer(scope, receive)
        head = [(b"content-type", b"application/json"), *headers]
        body = answer if isinstance(answer, bytes) else orjson.dumps(answer)
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> Result:
        if scope["method"] != "POST":
            return 405, {"error": "POST batches to this URL"}, []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not authorized(self._token, headers.get("authorization")):
            return 401, {"error": "a valid token is required (Authorization: Bearer)"}, []
        try:
            body = await read_body(receive, MAX_BODY, headers.get("content-length"))
            batch = parse_batch(decode(headers.get("content-encoding"), body))
        except (TooLarge, BodyTooLarge) as exc:
            return 413, {"error": str(exc)}, []
        except ValueError as exc:
            return 400, {"error": str(exc)}, []
        return await self.handle(batch, headers, scope.get("path", "/"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def playbooks_from_environment() -> Any:
    """The decoded playbook file that :func:`run`'s caller put in the environment, or None."""
    spec = os.environ.get(PLAYBOOKS_VARIABLE)
    return orjson.loads(spec) if spec else None


def run(
    app: str | Any, host: str, port: int, workers: int = 1, spec: Any = None,
    token: str | None = None,
) -> None:  # fmt: skip
    """Serve ``app`` under uvicorn until stopped (SIGTERM, Ctrl-C): an import string of a
    factory (each worker process makes its own app), or an app for a single process."""
    if spec is not None:
        os.environ[PLAYBOOKS_VARIABLE] = orjson.dumps(spec).decode()
    if token is not None:
        os.environ[TOKEN_VARIABLE] = token
    uvicorn.run(
        app,
        factory=isinstance(app, str),
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
