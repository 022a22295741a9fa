"""The current HTTP request, per thread and per asyncio task (``contextvars``).

A middleware records what it saw of a request (:class:`Capture`, unparsed) and makes it current
for the request's duration. Nothing is parsed or scrubbed unless ``track()`` runs during the
request: then the request object (client IP, user agent, path, verb, host, scheme, referer,
route, request id, query parameters; the body's fields too for ``collect_body``) is built
once, scrubbed, encoded, and reused by every later event of the same request.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import Any, cast
from urllib.parse import unquote

import orjson

from .scrub import MAX_ITEMS, Scrubber


@dataclass(slots=True)
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


@dataclass(slots=True)
class RequestContext:
    """The current request and what the application said about it (``identify()``)."""

    capture: Capture
    user: dict[str, str | int] | None = None
    traits: dict[str, Any] | None = None
    # The security response this request is answered with (sqreen.security.actions.Action), if any.
    blocked: Any = None
    # The framework answered ``blocked`` itself (its own block page): the middleware keeps it.
    answered: bool = False
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
            self._request_id = self.capture.header("x-request-id") or new_request_id()
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

    def __init__(
        self, ip_header: str | None, scrubber: Scrubber, trusted: int | Sequence[str] = 1
    ) -> None:
        self._ip_header = ip_header.lower() if ip_header else None
        self._scrubber = scrubber
        self._trusted: int | tuple[Network, ...] = (
            trusted
            if isinstance(trusted, int)
            else tuple(ipaddress.ip_network(t, strict=False) for t in trusted)
        )

    def client_ip(self, capture: Capture) -> str | None:
        """The request's client IP by these settings (see :func:`client_ip`)."""
        forwarded = capture.header(self._ip_header) if self._ip_header else None
        return client_ip(capture.peer, forwarded, self._trusted)

    def build(self, capture: Capture, request_id: str, collect_body: bool) -> dict[str, Any]:
        text = self._scrubber.text
        short = self._scrubber.unchanged_below  # shorter strings come out of text() unchanged
        header = capture.header
        request: dict[str, Any] = {}
        ip = self.client_ip(capture)
        if ip:
            request["ip"] = text(ip)
        user_agent = header("user-agent")
        if user_agent:
            request["user_agent"] = text(user_agent)
        # Short dimensions skip the call: this runs for every request that tracks an event.
        path, verb, host, scheme = capture.path, capture.verb, capture.host, capture.scheme
        request["path"] = path if len(path) < short else text(path)
        request["verb"] = verb if len(verb) < short else text(verb)
        if host:
            request["host"] = host if len(host) < short else text(host)
        if scheme:
            request["scheme"] = scheme if len(scheme) < short else text(scheme)
        referer = header("referer")
        if referer:
            request["referer"] = text(self._scrubber.scrub_url(referer))
        endpoint = _endpoint(capture.endpoint)
        if endpoint:
            request["endpoint"] = endpoint if len(endpoint) < short else text(endpoint)
        request["request_id"] = text(request_id)
        params: dict[str, Any] = {}
        if capture.query:
            params["query"] = self._scrubber.scrub_fields(fields(capture.query))
        if collect_body and capture.body and capture.body_kind == "form":
            form = fields(capture.body.decode("utf-8", "replace"))
            params["form"] = self._scrubber.scrub_fields(form)
        elif collect_body and capture.body and capture.body_kind == "json":
            found = json_object(capture.body)
            if found is not None:
                # Also makes the body safe to encode, whatever it held.
                params["json"] = self._scrubber.scrub(found)
        if params:
            request["params"] = params
        return request


# Request ids: a random prefix per process (made again in a forked child) and a counter, as
# unique as a UUID for grouping a request's events, at a fraction of its cost per request.
_request_ids: tuple[int, str] = (0, "")
_request_count = itertools.count()


def new_request_id() -> str:
    """32 hex digits, like the agent's ``uuid4().hex`` request ids."""
    global _request_ids
    pid, prefix = _request_ids
    if pid != os.getpid():
        prefix = os.urandom(8).hex()
        _request_ids = (os.getpid(), prefix)
    return f"{prefix}{next(_request_count) & _COUNT_MASK:016x}"


_COUNT_MASK = (1 << 64) - 1


def json_object(body: bytes) -> dict[str, Any] | None:
    """A JSON body's fields when it is an object; None for anything else (an array or a
    scalar has no named fields; a body that does not parse is left out)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


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


FieldMap = dict[str, str | list[str]]


def fields(encoded: str) -> FieldMap:
    """Parse a query string or form body; a repeated name gives a list of its values.

    As ``urllib.parse.parse_qsl`` with blank values kept. Most strings hold no escape and no
    repeated name: those are split by C loops (``map``, ``dict``), a few µs less per request
    than a Python loop over the pieces; the others take that loop.
    """
    text = encoded.replace("+", " ")  # before splitting: a literal plus is always escaped
    pieces = text.split("&")
    if "%" not in text and len(pieces) <= MAX_ITEMS:
        try:
            split = cast(FieldMap, dict(map(str.split, pieces, repeat("="), repeat(1))))
        except ValueError:  # a piece without "=" (or an empty one): the loop below
            pass
        else:
            if len(split) == len(pieces) and "" not in split:
                return split
    pairs = list(map(str.partition, islice(pieces, MAX_ITEMS), repeat("=")))
    parsed: FieldMap = {}
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(
    peer: str | None, forwarded: str | None, trusted: int | Sequence[Network] = 1
) -> str | None:
    """The client's IP: the address the proxies in front of the application saw, else the
    peer.

    A forwarding header (``X-Forwarded-For`` lists, RFC 7239 ``Forwarded``'s ``for=``, with
    ports and brackets) is read from the right, where each proxy appends the address it saw:
    its leftmost entries are the client's to write. ``trusted`` is how many proxies there are
    (the client is that many entries from the right), or their addresses and ranges (the
    peer must be one of them; the client is the first entry from the right that is not).
    Garbage where the client should be falls back to the peer.
    """
    if forwarded:
        entries = forwarded.split(",")
        if isinstance(trusted, int):
            found = _ip(entries[-trusted]) if len(entries) >= trusted else None
            if found is not None:
                return found
        elif peer is not None and _within(_ip(peer), trusted):
            for entry in reversed(entries):
                found = _ip(entry)
                if found is None:
                    break
                if not _within(found, trusted):
                    return found
    if peer is None:
        return None
    return _ip(peer) or peer


def _within(ip: str | None, networks: Sequence[Network]) -> bool:
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    return any(address.version == n.version and address in n for n in networks)


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
