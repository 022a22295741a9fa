"""ASGI middleware: ``app = SqreenMiddleware(app)`` (Starlette, FastAPI: ``app.add_middleware``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..context import Capture, enter, leave
from . import DEFAULT_MAX_FORM_BYTES, is_form

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SqreenMiddleware:
    """Makes each HTTP request current for ``sqreen.track()`` while the application handles it
    (in its task, and in the threads it runs sync endpoints in, which copy the context)."""

    def __init__(self, app: ASGIApp, max_form_bytes: int = DEFAULT_MAX_FORM_BYTES) -> None:
        self.app = app
        self.max_form_bytes = max_form_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        form: bytes | None = None
        if is_form(headers.get("content-type")) and _length(headers) <= self.max_form_bytes:
            form, receive = await _read_body(receive, self.max_form_bytes)
        client = scope.get("client")
        path = scope.get("root_path", "") + scope.get("path", "")
        token = enter(
            Capture(
                peer=client[0] if client else None,
                header=headers.get,
                path=path or "/",
                verb=scope.get("method", "GET"),
                query=scope.get("query_string", b"").decode("latin-1"),
                form=form,
            )
        )
        try:
            await self.app(scope, receive, send)
        finally:
            leave(token)


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
