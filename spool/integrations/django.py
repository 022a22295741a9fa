"""Django middleware: add ``"sqreen.integrations.django.SqreenMiddleware"`` to ``MIDDLEWARE``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserBlocked
from ..request.context import RequestContext, current, enter, leave
from ..spooler import Spooler
from . import DEFAULT_MAX_BODY_BYTES, answer, screened
from .wsgi import body_length, capture


class SqreenMiddleware:
    """Makes each request current for ``sqreen.track()`` while Django handles it (sync), and
    answers the requests that a security response stops: a blocked IP before the view runs, a
    blocked user when the view's ``identify()`` raised UserBlocked (or swallowed it)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings  # type: ignore[import-untyped]  # Django is there

        self.get_response = get_response
        # settings.SQREEN_SPOOLER: a Spooler of the project's; the process's default if unset.
        self.spooler: Spooler | None = getattr(settings, "SQREEN_SPOOLER", None)

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
            context = current()
            assert context is not None
            if screened(context, self.spooler):
                return _answer(context, meta)
            response = self.get_response(request)
            # Django turned a UserBlocked into a 500 (after process_exception), or the view
            # swallowed it: either way the request is marked, and its response replaced.
            return _answer(context, meta) if context.blocked is not None else response
        finally:
            leave(token)

    def process_exception(self, request: Any, exception: Exception) -> Any:
        context = current()
        if isinstance(exception, UserBlocked) and context is not None:
            return _answer(context, request.META)
        return None


def _answer(context: RequestContext, meta: Any) -> Any:
    from django.http import HttpResponse  # type: ignore[import-untyped]

    status, headers, body = answer(context.blocked, meta.get("HTTP_ACCEPT"))
    return HttpResponse(body, status=status, headers=dict(headers))
