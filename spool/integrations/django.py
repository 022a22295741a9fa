"""Django middleware: add ``"sqreen.integrations.django.SqreenMiddleware"`` to ``MIDDLEWARE``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import enter, leave
from . import DEFAULT_MAX_BODY_BYTES
from .wsgi import body_length, capture


class SqreenMiddleware:
    """Makes each request current for ``sqreen.track()`` while Django handles it (sync)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        meta = request.META
        length, kind = body_length(meta, DEFAULT_MAX_BODY_BYTES)
        body = None
        if length:
            # Django keeps the body: request.POST and the view's request.body read these bytes.
            try:
                body = request.body
            except Exception:  # an earlier middleware streamed it (RawPostDataException)
                body = None

        def route() -> object:  # resolved once the view runs, after every middleware
            return getattr(getattr(request, "resolver_match", None), "route", None)

        token = enter(capture(meta, body, kind, route))
        try:
            return self.get_response(request)
        finally:
            leave(token)
