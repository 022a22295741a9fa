"""Django middleware: add ``"sqreen.integrations.django.SqreenMiddleware"`` to ``MIDDLEWARE``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import enter, leave
from . import DEFAULT_MAX_FORM_BYTES, is_form
from .wsgi import capture


class SqreenMiddleware:
    """Makes each request current for ``sqreen.track()`` while Django handles it (sync)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        meta = request.META
        form = None
        if is_form(meta.get("CONTENT_TYPE")):
            try:
                length = int(meta.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if 0 < length <= DEFAULT_MAX_FORM_BYTES:
                form = request.body  # Django keeps it: request.POST parses the same bytes
        token = enter(capture(meta, form))
        try:
            return self.get_response(request)
        finally:
            leave(token)
