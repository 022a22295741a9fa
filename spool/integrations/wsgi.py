"""WSGI middleware: ``app = SqreenMiddleware(app)`` (Flask: ``app.wsgi_app = ...``)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..context import Capture, enter, leave
from . import DEFAULT_MAX_FORM_BYTES, is_form

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SqreenMiddleware:
    """Makes each request current for ``sqreen.track()`` while the application handles it."""

    def __init__(self, app: WSGIApp, max_form_bytes: int = DEFAULT_MAX_FORM_BYTES) -> None:
        self.app = app
        self.max_form_bytes = max_form_bytes

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        token = enter(capture(environ, read_form(environ, self.max_form_bytes)))
        try:
            return self.app(environ, start_response)
        finally:
            leave(token)


def capture(environ: Mapping[str, Any], form: bytes | None) -> Capture:
    """What a WSGI environ (or Django's ``request.META``) says of its request."""

    def header(name: str) -> str | None:
        key = name.upper().replace("-", "_")
        value = environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}")
        return value if isinstance(value, str) else None

    return Capture(
        peer=environ.get("REMOTE_ADDR") or None,
        header=header,
        path=(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/",
        verb=environ.get("REQUEST_METHOD", "GET"),
        query=environ.get("QUERY_STRING", ""),
        form=form,
    )


def form_length(environ: Mapping[str, Any], limit: int) -> int:
    """The declared length of a form body of at most ``limit`` bytes, else 0: the body is not
    a form, too large, or of no declared length (chunked: it could not be given back intact)."""
    if not is_form(environ.get("CONTENT_TYPE")):
        return 0
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return 0
    return length if 0 < length <= limit else 0


def read_form(environ: dict[str, Any], limit: int) -> bytes | None:
    """Read a small form body, and put an identical stream back for the application."""
    length = form_length(environ, limit)
    if not length:
        return None
    body: bytes = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body
