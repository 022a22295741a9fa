"""Middlewares that make each HTTP request current for ``sqreen.track()``.

``sqreen.integrations.wsgi`` (Flask, Django under WSGI, any WSGI app),
``sqreen.integrations.asgi`` (Starlette, FastAPI, any ASGI app) and
``sqreen.integrations.django`` (a class for Django's ``MIDDLEWARE``). None of them imports a web
framework, and ``import sqreen`` imports none of them.
"""

from __future__ import annotations

# Form and JSON bodies up to this size are read for their fields (and handed on intact), for
# the events that ask for them (``collect_body``); larger ones are left alone, unread.
DEFAULT_MAX_BODY_BYTES = 16 * 1024


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
