"""The Event Explorer's ASGI app, served under ``/ui`` by uvicorn.

``GET /ui/`` is the page (static HTML: the CSRF token in a ``<meta>``, every stored text set
by the script with ``textContent``); ``GET /ui/static/<file>`` its script, stylesheet and the
vendored chart library; ``GET /ui/api/<view>`` the views as JSON; ``POST`` (with the CSRF token
in ``X-CSRF-Token``) removes a decision or replays a draft playbook.

With a token (required beyond loopback), every request carries it: ``Authorization: Bearer``,
or the cookie that ``/ui/?token=...`` sets (HttpOnly, SameSite=Strict) before redirecting to
the page without it. Every answer forbids framing and sniffing, and the page's
Content-Security-Policy allows scripts, styles and connections to its own origin only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import secrets
import sqlite3
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from .. import clock
from ..asgi import BodyTooLarge, Receive, Scope, Send, read_body
from ..automation.playbooks import Problems, parse
from ..collector.replay import run as replay
from ..collector.store import EventStore
from ..storage.files import read_only
from . import views
from .spool import SpoolSide

PREFIX = "/ui"
COOKIE = "sqreen_ui"
MAX_POST = 256 * 1024
STATIC = {
    "explorer.js": "text/javascript",
    "explorer.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}
_SECURITY = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
]

Result = tuple[int, bytes, str, list[tuple[bytes, bytes]]]


class Explorer:
    """The app over one event store (and optionally a spool, read-only)."""

    def __init__(
        self,
        store: Path | None,
        token: str | None = None,
        playbooks: str | None = None,
        spool: Path | None = None,
        writer: EventStore | None = None,
    ) -> None:
        self._store, self._token, self._playbooks = store, token, playbooks
        self._spool = None if spool is None else SpoolSide(spool)
        self._writer = writer
        self._csrf = secrets.token_urlsafe(32)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, body, kind, headers = await self._route(scope, receive)
        head = [(b"content-type", kind.encode()), (b"cache-control", b"no-store"), *_SECURITY]
        await send({"type": "http.response.start", "status": status, "headers": head + headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> Result:
        path: str = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path in (PREFIX, f"{PREFIX}/") and "token" in query and self._token is not None:
            return self._login(query["token"][0])
        if not self._allowed(headers):
            return _json(401, {"error": "a valid token is required"})
        if path in (PREFIX, f"{PREFIX}/"):
            return 200, self._page(), "text/html; charset=utf-8", []
        if path.startswith(f"{PREFIX}/static/"):
            return _static(path.removeprefix(f"{PREFIX}/static/"))
        if not path.startswith(f"{PREFIX}/api/"):
            return _json(404, {"error": "not found"})
        view = path.removeprefix(f"{PREFIX}/api/")
        if scope["method"] == "POST":
            if not hmac.compare_digest(headers.get("x-csrf-token", ""), self._csrf):
                return _json(403, {"error": "a valid CSRF token is required"})
            try:
                body = await read_body(receive, MAX_POST)
            except BodyTooLarge as exc:
                return _json(413, {"error": str(exc)})
            return await asyncio.to_thread(self._post, view, body)
        if scope["method"] != "GET":
            return _json(405, {"error": "GET or POST"})
        return await asyncio.to_thread(self._get, view, query)

    def _allowed(self, headers: dict[str, str]) -> bool:
        if self._token is None:
            return True
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                given = given or value
        return hmac.compare_digest(given.encode(), self._token.encode())

    def _login(self, token: str) -> Result:
        if self._token is None or not hmac.compare_digest(token.encode(), self._token.encode()):
            return _json(401, {"error": "a valid token is required"})
        cookie = f"{COOKIE}={self._token}; HttpOnly; SameSite=Strict; Path={PREFIX}"
        return 303, b"", "text/plain", [(b"set-cookie", cookie.encode()),
                                        (b"location", f"{PREFIX}/".encode())]  # fmt: skip

    def _page(self) -> bytes:
        page = (files("sqreen.explorer") / "static" / "index.html").read_text()
        return page.replace("{{csrf}}", html.escape(self._csrf)).encode()

    def _get(self, view: str, query: dict[str, list[str]]) -> Result:
        try:
            if view == "spool":
                if self._spool is None:
                    return _json(404, {"error": "no spool was given"})
                return _json(200, self._spool.report())
            if view == "playbooks":
                return _json(200, {"text": self._playbooks or ""})
            with self._reading() as connection:
                return _json(200, self._view(connection, view, query))
        except views.BadView as exc:
            return _json(400, {"error": str(exc)})
        except LookupError:
            return _json(404, {"error": "not found"})
        except sqlite3.Error as exc:
            return _json(503, {"error": f"the store cannot be read: {exc}"})

    def _view(self, connection: sqlite3.Connection, view: str, query: dict[str, list[str]]) -> Any:
        if view == "dimensions":
            return {"dimensions": views.dimensions(connection)}
        if view == "decisions":
            return {
                "decisions": views.decisions(connection, clock.now(), _one(query, "all") != "1")
            }
        if view == "event":
            found = views.event(connection, _one(query, "id") or "")
            if found is None:
                raise LookupError
            return found
        selection = _selection(query)
        if view == "trend":
            return views.trend(connection, selection)
        if view == "breakdown":
            return views.breakdown(connection, selection, _one(query, "dimension") or "name")
        if view == "events":
            before = _one(query, "before")
            return views.events(connection, selection, int(before) if before else None)
        raise LookupError

    def _post(self, view: str, body: bytes) -> Result:
        try:
            document = orjson.loads(body)
            if not isinstance(document, dict):
                raise ValueError("expected a JSON object")
            if view == "remove":
                return self._remove(str(document.get("id", "")))
            if view == "replay":
                return self._replay(document)
        except (ValueError, views.BadView) as exc:
            return _json(400, {"error": str(exc)})
        except sqlite3.Error as exc:
            return _json(503, {"error": f"the store cannot be used: {exc}"})
        return _json(404, {"error": "not found"})

    def _remove(self, decision_id: str) -> Result:
        if self._store is None:
            return _json(404, {"error": "no event store"})
        if self._writer is None:
            self._writer = EventStore(self._store)
        with self._writer.transaction() as connection:
            removed = views.remove_decision(connection, decision_id, clock.now())
        return _json(200 if removed else 404, {"removed": removed})

    def _replay(self, document: dict[str, Any]) -> Result:
        try:
            playbooks = parse(str(document.get("playbooks", "")))
        except Problems as exc:
            return _json(400, {"error": "the playbook file has mistakes", "problems": exc.lines})
        selection = _selection({k: [str(v)] for k, v in document.items() if k != "playbooks"})
        with self._reading() as connection, tempfile.TemporaryDirectory() as work:
            rows = connection.execute(
                "SELECT payload FROM events WHERE at >= ? AND at < ? ORDER BY at, seq",
                (selection.start, selection.end),
            )
            found = replay(playbooks, (orjson.loads(p) for (p,) in rows), Path(work))
        result = views.replayed(found, selection)
        return _json(200, result.__dict__)

    def _reading(self) -> contextlib.closing[sqlite3.Connection]:
        if self._store is None:
            raise LookupError
        return contextlib.closing(read_only(self._store))


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _selection(query: dict[str, list[str]]) -> views.Selection:
    try:
        end = float(_one(query, "to") or clock.now())
        start = float(_one(query, "from") or end - 86400)
        bucket = float(_one(query, "bucket") or max(60.0, (end - start) / 96))
    except ValueError:
        raise views.BadView("from, to and bucket are numbers (Unix seconds)") from None
    filters = []
    for item in query.get("f", []):
        path, sep, value = item.partition(":")
        if not sep:
            raise views.BadView("a filter is dimension:value")
        filters.append((path, value))
    return views.Selection(start, end, bucket, _one(query, "name") or None, tuple(filters))


def _static(name: str) -> Result:
    kind = STATIC.get(name)
    if kind is None:  # a fixed list: no path from the request reaches the file system
        return _json(404, {"error": "not found"})
    body = (files("sqreen.explorer") / "static" / name).read_bytes()
    return 200, body, f"{kind}; charset=utf-8", []


def _json(status: int, document: Any) -> Result:
    return status, orjson.dumps(document), "application/json", []
