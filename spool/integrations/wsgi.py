"""WSGI middleware: ``app = SqreenMiddleware(app)`` (Flask: ``app.wsgi_app = ...``)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import UserBlocked
from ..request.context import Capture, RequestContext, current, enter, leave
from ..spooler import Spooler
from . import DEFAULT_MAX_BODY_BYTES, STATUS_LINES, answer, body_kind, screened

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SqreenMiddleware:
    """Makes each request current for ``sqreen.track()`` while the application handles it,
    and answers the requests that a security response stops (see :func:`enforced`)."""

    def __init__(
        self,
        app: WSGIApp,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        spooler: Spooler | None = None,
        screen: bool = True,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.spooler = spooler  # None: the process's default spooler
        # False: the framework screens blocked IPs itself (a hook that renders its own page).
        self.screen = screen

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        token = enter(capture(environ, *read_body(environ, self.max_body_bytes)))
        try:
            return enforced(self.app, environ, start_response, self.spooler, self.screen)
        finally:
            leave(token)


def enforced(
    app: WSGIApp,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    spooler: Spooler | None = None,
    screen: bool = True,
) -> Iterable[bytes]:
    """Run ``app`` for the current request, unless a security response stops it: a blocked IP
    before the application runs (unless ``screen`` is False); a blocked user when
    ``identify()`` raises UserBlocked, or when the application swallowed that exception (the
    request stays marked, and the application's response is replaced, unless the framework
    answered the block itself). The application's ``start_response`` waits until it
    returns, so that its response can still be replaced."""
    request = current()
    assert request is not None
    if screen and screened(request, spooler):
        return _answer(request, environ, start_response)
    held: list[tuple[Any, ...]] = []
    returned = False
    writes: list[Callable[[bytes], Any]] = []

    def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if returned:  # called while the body is iterated: too late to replace anything
            return start_response(status, headers, exc_info)
        held[:] = [(status, headers, exc_info)]

        def write(data: bytes) -> None:  # the legacy write(): the response has begun
            if not writes:
                writes.append(start_response(*held[0]))
            writes[0](data)

        return write

    try:
        result = app(environ, hold)
    except UserBlocked:
        if writes:
            raise
        return _answer(request, environ, start_response)
    returned = True
    if request.blocked is not None and not writes and not request.answered:
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return _answer(request, environ, start_response)
    if held and not writes:
        start_response(*held[0])
    return result


def _answer(
    request: RequestContext, environ: Mapping[str, Any], start_response: Callable[..., Any]
) -> list[bytes]:
    status, headers, body = answer(request.blocked, environ.get("HTTP_ACCEPT"))
    start_response(STATUS_LINES[status], headers)
    return [body]


def capture(
    environ: Mapping[str, Any],
    body: bytes | None,
    kind: str | None,
    endpoint: Callable[[], object] | None = None,
) -> Capture:
    """What a WSGI environ (or Django's ``request.META``) says of its request. The route is
    Flask's (werkzeug keeps its request in the environ) unless ``endpoint`` says otherwise."""

    def header(name: str) -> str | None:
        value = environ.get(_ENVIRON_KEYS.get(name) or _environ_key(name))
        return value if isinstance(value, str) else None

    return Capture(
        peer=environ.get("REMOTE_ADDR") or None,
        header=header,
        path=(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/",
        verb=environ.get("REQUEST_METHOD", "GET"),
        query=environ.get("QUERY_STRING", ""),
        host=environ.get("HTTP_HOST") or environ.get("SERVER_NAME"),
        scheme=environ.get("wsgi.url_scheme"),
        body=body,
        body_kind=kind,
        endpoint=endpoint or (lambda: _flask_rule(environ)),
    )


# Header names (lower case) to environ keys: the few names looked up per request, cached.
_ENVIRON_KEYS: dict[str, str] = {}


def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
    if len(_ENVIRON_KEYS) < 64:
        _ENVIRON_KEYS[name] = key
    return key


def _flask_rule(environ: Mapping[str, Any]) -> object:
    return getattr(getattr(environ.get("werkzeug.request"), "url_rule", None), "rule", None)


def body_length(environ: Mapping[str, Any], limit: int) -> tuple[int, str | None]:
    """The declared length and kind of a form or JSON body of at most ``limit`` bytes, else
    ``(0, None)``: another kind, too large, or of no declared length (chunked: it could not be
    given back intact)."""
    kind = body_kind(environ.get("CONTENT_TYPE"))
    if kind is None:
        return 0, None
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return 0, None
    return (length, kind) if 0 < length <= limit else (0, None)


def read_body(environ: dict[str, Any], limit: int) -> tuple[bytes | None, str | None]:
    """Read a small form or JSON body, and put an identical stream back for the application."""
    length, kind = body_length(environ, limit)
    if not length:
        return None, None
    body: bytes = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body, kind
