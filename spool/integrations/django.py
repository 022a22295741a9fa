"""Django middleware: add ``"sqreen.integrations.django.SqreenMiddleware"`` to ``MIDDLEWARE``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import enter, leave
from . import DEFAULT_MAX_FORM_BYTES
from .wsgi import capture, form_length


class SqreenMiddleware:
    """Makes each request current for ``sqreen.track()`` while Django handles it (sync)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        meta = request.META
        # Django keeps the body: request.POST parses the same bytes.
        form = request.body if form_length(meta, DEFAULT_MAX_FORM_BYTES) else None
        token = enter(capture(meta, form))
        try:
            return self.get_response(request)
        finally:
            leave(token)
