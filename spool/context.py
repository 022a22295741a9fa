"""The current HTTP request, per thread and per asyncio task (``contextvars``).

A middleware records what it saw of a request (:class:`Capture`, unparsed) and makes it current
for the request's duration. Nothing is parsed or scrubbed unless ``track()`` runs during the
request: then the request object (client IP, user agent, path, verb, host, scheme, referer,
route, request id, query parameters; the body's fields too for ``collect_body``) is built
once, scrubbed, encoded, and reused by every later event of the same request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from typing import Any
from urllib.parse import unquote

import orjson

from .event import new_id
from .scrub import MAX_ITEMS, Scrubber


@dataclass
class Capture:
    """One request as a middleware saw it. ``header`` looks a header up by lower-case name;
    ``body`` is a small body of kind ``body_kind`` (``"form"`` or ``"json"``) that the
    application was handed back intact; ``endpoint`` asks the framework for the route matched
    (called only once the application runs, when the framework has routed the request)."""

    peer: str | None
    header: Callable[[str], str | None]
    path: str
    verb: str
    query: str = ""
    host: str | None = None
    scheme: str | None = None
    body: bytes | None = None
    body_kind: str | None = None
    endpoint: Callable[[], object] | None = None


@dataclass
class RequestContext:
    """The current request and what the application said about it (``identify()``)."""

    capture: Capture
    user: dict[str, str | int] | None = None
    traits: dict[str, Any] | None = None
    _request_id: str | None = field(default=None, repr=False)
    # The builder (spoolers may differ in settings) and the request object it encoded without
    # and with the body's fields (``collect_body``).
    _encoded: list[Any] = field(default_factory=lambda: [None, None, None], repr=False)

    def request_json(self, builder: RequestBuilder, collect_body: bool = False) -> bytes:
        encoded = self._encoded
        if encoded[0] is not builder:
            encoded[:] = (builder, None, None)
        found: bytes | None = encoded[1 + collect_body]
        if found is None:
            found = bounded(builder.build(self.capture, self.request_id, collect_body))
            encoded[1 + collect_body] = found
        return found

    @property
    def request_id(self) -> str:
        """The client's ``X-Request-ID``, else one made for this request: the same for every
        event of the request, so that they can be grouped."""
        if self._request_id is None:
            self._request_id = self.capture.header("x-request-id") or new_id()
        return self._request_id


def bounded(request: dict[str, Any]) -> bytes:
    """The request object encoded in at most MAX_REQUEST_BYTES, so that what a client sends
    can never push an event past its limit (and make track() fail).

    Values are cut at 1,024 characters, but a character may take 6 bytes in JSON (``\u0001``)
    and there may be 100 of them: past the budget, the parameters are kept in order while they
    fit (one that does not is left out), the other dimensions cut in bytes, and the request is
    marked ``"truncated": true``.
    """
    encoded = orjson.dumps(request)
    if len(encoded) <= MAX_REQUEST_BYTES:
        return encoded
    params: dict[str, dict[str, Any]] = request.pop("params", {})
    request["truncated"] = True
    for key in DIMENSIONS:
        if key in request:
            request[key] = _cut(request[key], MAX_DIMENSION_BYTES)
    room = MAX_REQUEST_BYTES - len(orjson.dumps(request)) - len(',"params":{}')
    kept: dict[str, dict[str, Any]] = {}
    for where, values in params.items():
        room -= len(orjson.dumps(where)) + len(":{},")
        for name, value in values.items():
            size = len(orjson.dumps({name: value}))  # with the braces: about its comma
            if size <= room:
                kept.setdefault(where, {})[name] = value
                room -= size
    if kept:
        request["params"] = kept
    return orjson.dumps(request)


def _cut(text: str, limit: int) -> str:
    """``text`` cut so that its JSON takes at most about ``limit`` bytes."""
    while len(orjson.dumps(text)) > limit:
        text = text[: max(0, len(text) // 2)] + "…"
        if len(text) <= 1:
            break
    return text


# The request object's share of an event's 64 KiB: the application's properties keep the rest.
MAX_REQUEST_BYTES = 16 * 1024
# The string dimensions, each cut to a size that lets all of them fit together in the budget.
DIMENSIONS = (
    "ip",
    "user_agent",
    "path",
    "verb",
    "host",
    "scheme",
    "referer",
    "endpoint",
    "request_id",
)
MAX_DIMENSION_BYTES = 1024

_current: ContextVar[RequestContext | None] = ContextVar("sqreen_request", default=None)


def current() -> RequestContext | None:
    """The request being handled in this thread or task, if any."""
    return _current.get()


def enter(capture: Capture) -> Token[RequestContext | None]:
    """Make ``capture`` the current request; give the token to :func:`leave` when it ends."""
    return _current.set(RequestContext(capture))


def leave(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


class RequestBuilder:
    """Turns a capture into the event's ``request`` object, by one spooler's settings."""

    def __init__(self, ip_header: str | None, scrubber: Scrubber) -> None:
        self._ip_header = ip_header.lower() if ip_header else None
        self._scrubber = scrubber

    def build(self, capture: Capture, request_id: str, collect_body: bool) -> dict[str, Any]:
        text = self._scrubber.text
        header = capture.header
        request: dict[str, Any] = {}
        forwarded = header(self._ip_header) if self._ip_header else None
        ip = client_ip(capture.peer, forwarded)
        if ip:
            request["ip"] = text(ip)
        user_agent = header("user-agent")
        if user_agent:
            request["user_agent"] = text(user_agent)
        request["path"] = text(capture.path)
        request["verb"] = text(capture.verb)
        if capture.host:
            request["host"] = text(capture.host)
        if capture.scheme:
            request["scheme"] = text(capture.scheme)
        referer = header("referer")
        if referer:
            request["referer"] = text(self._scrubber.scrub_url(referer))
        endpoint = _endpoint(capture.endpoint)
        if endpoint:
            request["endpoint"] = text(endpoint)
        request["request_id"] = text(request_id)
        params: dict[str, Any] = {}
        if capture.query:
            params["query"] = fields(capture.query)
        if collect_body and capture.body:
            body = body_fields(capture.body, capture.body_kind)
            if body is not None:
                params[capture.body_kind or ""] = body
        if params:
            # Also makes the parameters safe to encode, whatever the request held.
            request["params"] = self._scrubber.scrub(params)
        return request


def body_fields(body: bytes, kind: str | None) -> dict[str, Any] | None:
    """A form's fields, or a JSON body's when it is an object; None for anything else (a
    JSON array or scalar has no named fields; a body that does not parse is left out)."""
    if kind == "form":
        return fields(body.decode("utf-8", "replace"))
    if kind == "json":
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _endpoint(route: Callable[[], object] | None) -> str | None:
    """The framework's name for the route matched, if it has one; never an exception from a
    framework's internals (an application's custom rule class, say)."""
    if route is None:
        return None
    try:
        found = route()
    except Exception:
        return None
    return found if isinstance(found, str) else None


def fields(encoded: str) -> dict[str, str | list[str]]:
    """Parse a query string or form body; a repeated name gives a list of its values.

    As ``urllib.parse.parse_qsl`` with blank values kept. Most strings hold no escape and no
    repeated name: those are split by C loops (``map``, ``dict``), a few µs less per request
    than a Python loop over the pieces; the others take that loop.
    """
    text = encoded.replace("+", " ")  # before splitting: a literal plus is always escaped
    pairs = list(map(str.partition, islice(text.split("&"), MAX_ITEMS), repeat("=")))
    parsed: dict[str, str | list[str]] = dict(
        zip(map(_NAME, pairs), map(_VALUE, pairs), strict=True)
    )
    if "%" not in text and len(parsed) == len(pairs) and "" not in parsed:
        return parsed
    parsed = {}
    for name, separator, value in pairs:
        if not name and not separator:
            continue  # an empty piece ("a=1&&b=2")
        if "%" in name or "%" in value:
            name, value = unquote(name, errors="replace"), unquote(value, errors="replace")
        previous = parsed.get(name)
        if previous is None:
            parsed[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            parsed[name] = [previous, value]
    return parsed


_NAME, _VALUE = itemgetter(0), itemgetter(2)


def client_ip(peer: str | None, forwarded: str | None) -> str | None:
    """The client end of a forwarding header's chain when it names an IP, else the peer.

    Accepts ``X-Forwarded-For`` style lists and RFC 7239 ``Forwarded`` (``for=...``), with
    ports and brackets. Garbage in the header (spoofed or not) falls back to the peer.
    """
    if forwarded:
        found = _ip(forwarded.split(",", 1)[0])
        if found is not None:
            return found
    if peer is None:
        return None
    return _ip(peer) or peer


def _ip(text: str) -> str | None:
    value = text.strip()
    if "=" in value:  # Forwarded: for=...;proto=...
        for part in value.split(";"):
            name, _, rest = part.strip().partition("=")
            if name.strip().lower() == "for":
                value = rest.strip()
                break
    value = value.strip('"')
    if value.startswith("["):  # [v6]:port
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        socket.inet_pton(socket.AF_INET, value)  # the common case, without ipaddress's cost
        return value
    except OSError:
        pass
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
