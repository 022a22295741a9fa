"""Middlewares that make each HTTP request current for ``sqreen.track()``.

``sqreen.integrations.wsgi`` (Flask, Django under WSGI, any WSGI app),
``sqreen.integrations.asgi`` (Starlette, FastAPI, any ASGI app) and
``sqreen.integrations.django`` (a class for Django's ``MIDDLEWARE``). None of them imports a web
framework, and ``import sqreen`` imports none of them.
"""

from __future__ import annotations

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Form bodies up to this size are read for their parameters (and handed on intact); larger
# ones are left alone, unread.
DEFAULT_MAX_FORM_BYTES = 16 * 1024


def is_form(content_type: str | None) -> bool:
    return (
        content_type is not None
        and content_type.split(";", 1)[0].strip().lower() == FORM_CONTENT_TYPE
    )
