"""ASGI middleware: ``app = SqreenMiddleware(app)`` (Starlette, FastAPI: ``app.add_middleware``),
and ``lifespan(**settings)``, the lifespan (Starlette's ``lifespan=``, FastAPI's) that starts the
spooler at startup (:func:`sqreen.start`) and closes it at shutdown.

``block_page`` (a callable taking the action and the request's ``Accept``, returning a status,
headers and a body) answers blocked requests instead of our page."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import UserBlocked
from ..request.context import Capture, RequestContext, current, enter, leave
from ..spooler import Spooler
from . import DEFAULT_MAX_BODY_BYTES, answer, body_kind, screened

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
BlockPage = Callable[[Any, str | None], tuple[int, list[tuple[str, str]], bytes]]


def lifespan(**settings: Any) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that calls ``sqreen.start(**settings)`` at startup (so that no request pays
    for opening the spool) and closes the spooler at shutdown."""
    from ..default import start, stop

    @contextlib.asynccontextmanager
    async def span(app: Any) -> AsyncIterator[None]:
        start(**settings)
        try:
            yield
        finally:
            stop()

    return span


class SqreenMiddleware:
    """Makes each HTTP request current for ``sqreen.track()`` while the application handles it
    (in its task, and in the threads it runs sync endpoints in, which copy the context)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        spooler: Spooler | None = None,
        block_page: BlockPage | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.spooler = spooler  # None: the process's default spooler
        self.block_page = block_page or answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        body: bytes | None = None
        kind = body_kind(headers.get("content-type"))
        if kind is not None and _length(headers) <= self.max_body_bytes:
            body, receive = await _read_body(receive, self.max_body_bytes)
        client = scope.get("client")
        server = scope.get("server")
        path = scope.get("root_path", "") + scope.get("path", "")
        token = enter(
            Capture(
                peer=client[0] if client else None,
                header=headers.get,
                path=path or "/",
                verb=scope.get("method", "GET"),
                query=scope.get("query_string", b"").decode("latin-1"),
                host=headers.get("host") or (_host(server) if server else None),
                scheme=scope.get("scheme", "http"),
                body=body,
                body_kind=kind,
                # Starlette's router puts the route it matched into this same scope.
                endpoint=lambda: _starlette_route(scope),
            )
        )
        try:
            await enforced(
                self.app, scope, receive, send, headers.get("accept"), self.spooler,
                self.block_page,
            )  # fmt: skip
        finally:
            leave(token)


async def enforced(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    accept: str | None,
    spooler: Spooler | None = None,
    page: BlockPage = answer,
) -> None:
    """Run ``app`` for the current request unless a security response stops it: a blocked IP
    before the application runs; a blocked user when ``identify()`` raised UserBlocked, or the
    application swallowed it (its response, when it starts, is replaced by ours)."""
    request = current()
    assert request is not None
    if screened(request, spooler):
        await _answer(request, send, accept, page)
        return
    state = {"started": False, "replaced": False}

    async def guarded(message: Message) -> None:
        if state["replaced"]:
            return  # the application's own response, after ours: dropped
        if message["type"] == "http.response.start" and request.blocked is not None:
            state["replaced"] = state["started"] = True
            await _answer(request, send, accept, page)
            return
        if message["type"] == "http.response.start":
            state["started"] = True
        await send(message)

    try:
        await app(scope, receive, guarded)
    except UserBlocked:
        if state["started"] and not state["replaced"]:
            raise  # the response had begun: nothing can be replaced
    if request.blocked is not None and not state["started"]:
        await _answer(request, send, accept, page)


async def _answer(request: RequestContext, send: Send, accept: str | None, page: BlockPage) -> None:
    status, headers, body = page(request.blocked, accept)
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _host(server: Any) -> str | None:
    try:
        host, port = server
    except (TypeError, ValueError):  # a server that says something else: no host
        return None
    return f"{host}:{port}" if port is not None else str(host)


def _starlette_route(scope: Scope) -> object:
    route = scope.get("route")
    if route is not None:
        return getattr(route, "path", None)
    return getattr(scope.get("endpoint"), "__name__", None)


def _length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the body's messages (up to ``limit`` bytes); return the body (None if it ran over)
    and a ``receive`` that replays those messages before reading on."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > limit or not message.get("more_body", False):
            break
    complete = messages[-1]["type"] == "http.request" and not messages[-1].get("more_body", False)
    body = b"".join(m.get("body", b"") for m in messages) if complete and size <= limit else None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return body, replay
