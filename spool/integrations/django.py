"""Django: the app ``"sqreen.integrations.django.SqreenConfig"`` in ``INSTALLED_APPS`` starts
the spooler when Django is ready (``sqreen.start(**settings.SQREEN)``), and
``"sqreen.integrations.django.SqreenMiddleware"`` in ``MIDDLEWARE`` makes each request current.

``settings.SQREEN`` holds the settings by name (``{"path": ..., "url": ...}``), and
``block_template``: a template rendered (with ``action``) as the block page instead of ours."""

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
        self.template: str | None = getattr(settings, "SQREEN", {}).get(BLOCK_TEMPLATE)

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
                return _answer(context, meta, self.template)
            response = self.get_response(request)
            # Django turned a UserBlocked into a 500 (after process_exception), or the view
            # swallowed it: either way the request is marked, and its response replaced.
            blocked = context.blocked is not None
            return _answer(context, meta, self.template) if blocked else response
        finally:
            leave(token)

    def process_exception(self, request: Any, exception: Exception) -> Any:
        context = current()
        if isinstance(exception, UserBlocked) and context is not None:
            return _answer(context, request.META, self.template)
        return None


def _answer(context: RequestContext, meta: Any, template: str | None) -> Any:
    from django.http import HttpResponse  # type: ignore[import-untyped]

    action = context.blocked
    if template is not None and action.url is None:
        from django.template.loader import render_to_string  # type: ignore[import-untyped]

        return HttpResponse(render_to_string(template, {"action": action}), status=403)
    status, headers, body = answer(action, meta.get("HTTP_ACCEPT"))
    return HttpResponse(body, status=status, headers=dict(headers))


BLOCK_TEMPLATE = "block_template"
_config: type | None = None


def __getattr__(name: str) -> Any:
    # The AppConfig class is made on first use: this module is importable without Django.
    global _config
    if name != "SqreenConfig":
        raise AttributeError(name)
    if _config is None:
        from django.apps import AppConfig  # type: ignore[import-untyped]

        class SqreenConfig(AppConfig):  # type: ignore[misc]
            name = "sqreen.integrations.django"
            label = "sqreen"
            verbose_name = "sqreen-spool"

            def ready(self) -> None:
                from django.conf import settings

                from ..default import start

                chosen = dict(getattr(settings, "SQREEN", {}))
                chosen.pop(BLOCK_TEMPLATE, None)
                start(**chosen)

        _config = SqreenConfig
    return _config
