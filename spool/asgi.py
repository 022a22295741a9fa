"""What the package's ASGI apps share (the collector tier, ``collect --workers`` and the Event
Explorer, all under uvicorn): the ASGI callables' types, and reading a request's body within a
bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyTooLarge(ValueError):
    """A request body over its bound (413)."""


async def read_body(receive: Receive, limit: int, declared: str | None = None) -> bytes:
    """The request's body, refused (BodyTooLarge) past ``limit`` bytes, whether its declared
    ``Content-Length`` says so or its stream does."""
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"a body must be 0 to {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(f"a body must be 0 to {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)
