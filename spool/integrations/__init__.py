"""Middlewares that make each HTTP request current for ``sqreen.track()``.

``sqreen.integrations.wsgi`` (Flask, Django under WSGI, any WSGI app),
``sqreen.integrations.asgi`` (Starlette, FastAPI, any ASGI app) and
``sqreen.integrations.django`` (a class for Django's ``MIDDLEWARE``). None of them imports a web
framework, and ``import sqreen`` imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ..request.context import RequestContext
    from ..spooler import Spooler

# Form and JSON bodies up to this size are read for their fields (and handed on intact), for
# the events that ask for them (``collect_body``); larger ones are left alone, unread.
DEFAULT_MAX_BODY_BYTES = 16 * 1024


def screened(request: RequestContext, spooler: Spooler | None) -> bool:
    """Whether a security response stops the request before the application runs, by
    ``spooler``'s actions (the process default when None; none when the environment's settings
    are malformed: the request goes through)."""
    if spooler is None:
        from ..default import current_spooler

        spooler = current_spooler()
    return spooler is not None and spooler.screen(request) is not None


def body_kind(content_type: str | None) -> str | None:
    """``"form"`` or ``"json"`` for the bodies whose fields an event may carry, else None."""
    if content_type is None:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return "json"
    return None


BLOCK_PAGE = (
    b"<!doctype html><html><head><meta charset=utf-8><title>403 Forbidden</title></head>"
    b"<body><h1>403 Forbidden</h1><p>Your request was blocked.</p></body></html>"
)


def answer(action: Any, accept: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """The response for a request that a security response stops: ``403`` with a small page
    (JSON when the client accepts it), or ``303`` to the action's URL for a redirect."""
    if action.url is not None:
        body = b"See Other"
        return 303, [("Location", action.url), *_length(body, "text/plain")], body
    if accept is not None and "application/json" in accept.lower():
        body = orjson.dumps({"error": "blocked", "action_id": action.action_id})
        return 403, _length(body, "application/json"), body
    return 403, _length(BLOCK_PAGE, "text/html; charset=utf-8"), BLOCK_PAGE


def _length(body: bytes, content_type: str) -> list[tuple[str, str]]:
    return [("Content-Type", content_type), ("Content-Length", str(len(body)))]


STATUS_LINES = {303: "303 See Other", 403: "403 Forbidden"}
