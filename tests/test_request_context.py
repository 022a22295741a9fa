"""Request dimensions, identify() and the auth/signup helpers, through real web frameworks:
Flask (its test client and a real threaded server on loopback), Starlette (sync and async
endpoints, concurrent asyncio requests) and Django (its test client)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import flask
import httpx
import orjson
import pytest

import sqreen
from sqreen.event import MAX_EVENT_BYTES
from sqreen.integrations import asgi, wsgi
from sqreen.request.scrub import PLACEHOLDER

from .conftest import stored_events


@pytest.fixture
def spooler(spool_path: Path) -> Iterator[sqreen.Spooler]:
    spooler = sqreen.configure(path=spool_path, ip_header="X-Forwarded-For")
    yield spooler
    spooler.close()


def flask_app() -> flask.Flask:
    app = flask.Flask("shop")

    @app.route("/checkout", methods=["GET", "POST"])
    def checkout() -> str:
        user = flask.request.values.get("user")
        if user:
            sqreen.identify({"email": user}, {"plan": "pro"})
        sqreen.track("checkout", {"properties": {"user": user}, "collect_body": True})
        return flask.request.form.get("name", "ok")  # the form is still there for the app

    @app.route("/login", methods=["POST"])
    def login() -> str:
        ok = flask.request.form["password"] == "right"
        sqreen.auth_track(ok, email=flask.request.form["email"])
        sqreen.track("after_login")  # a successful login identified the request's user
        return "in" if ok else "out"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def test_flask_request_dimensions_and_identify(spooler: sqreen.Spooler, spool_path: Path) -> None:
    client = flask_app().test_client()
    response = client.get(
        "/checkout?user=ada@example.com&page=2&tag=a&tag=b",
        headers={
            "User-Agent": "curl/8.0",
            "Referer": "https://shop.example/cart?coupon=SPRING&api_key=k-1#top",
            "X-Request-ID": "req-7",
        },
        environ_base={"REMOTE_ADDR": "198.51.100.4"},
    )
    assert response.status_code == 200
    (event,) = stored_events(spool_path)
    assert event["user_identifiers"] == {"email": "ada@example.com"}
    assert event["request"] == {
        "ip": "198.51.100.4",
        "user_agent": "curl/8.0",
        "path": "/checkout",
        "verb": "GET",
        "host": "localhost",
        "scheme": "http",
        "referer": f"https://shop.example/cart?coupon=SPRING&api_key={PLACEHOLDER}#top",
        "endpoint": "/checkout",
        "request_id": "req-7",
        "params": {"query": {"user": "ada@example.com", "page": "2", "tag": ["a", "b"]}},
    }


def test_flask_form_is_scrubbed_and_left_intact(spooler: sqreen.Spooler, spool_path: Path) -> None:
    client = flask_app().test_client()
    response = client.post(
        "/checkout?api_key=k-123",
        data={"name": "Ada", "user_password": "hunter2", "card": "4111 1111 1111 1111"},
    )
    assert response.text == "Ada"
    (event,) = stored_events(spool_path)
    assert event["request"]["params"] == {
        "query": {"api_key": PLACEHOLDER},
        "form": {"name": "Ada", "user_password": PLACEHOLDER, "card": PLACEHOLDER},
    }
    assert b"hunter2" not in spool_path.read_bytes() + Path(f"{spool_path}-wal").read_bytes()


def test_large_forms_are_not_read(spooler: sqreen.Spooler, spool_path: Path) -> None:
    client = flask_app().test_client()
    big = "x" * 20_000
    assert client.post("/checkout", data={"name": big, "user": "bo"}).text == big
    (event,) = stored_events(spool_path)
    assert "form" not in event["request"].get("params", {})
    assert event["user_identifiers"] == {"email": "bo"}  # the app read its form itself


def test_explicit_user_identifiers_override_identify(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:
    app = flask.Flask("override")

    @app.route("/")
    def index() -> str:
        sqreen.identify({"email": "ada@example.com"})
        sqreen.track("implicit")
        sqreen.track("explicit", {"user_identifiers": {"id": "42"}})
        return "ok"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.test_client().get("/")
    implicit, explicit = stored_events(spool_path)
    assert implicit["user_identifiers"] == {"email": "ada@example.com"}
    assert explicit["user_identifiers"] == {"id": "42"}


def test_outside_a_request_there_is_no_request_object(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:
    assert sqreen.identify({"email": "ada@example.com"}) is False
    assert sqreen.track("background")
    (event,) = stored_events(spool_path)
    assert "request" not in event and "user_identifiers" not in event


def test_auth_and_signup_track(spooler: sqreen.Spooler, spool_path: Path) -> None:
    client = flask_app().test_client()
    client.post("/login", data={"email": "ada@example.com", "password": "wrong"})
    client.post("/login", data={"email": "ada@example.com", "password": "right"})
    assert sqreen.signup_track(email="bo@example.com", id="7")
    failed, after_failed, succeeded, after_success, signup = stored_events(spool_path)
    assert (failed["name"], failed["properties"]) == ("sqreen.auth_track", {"success": False})
    assert "user_identifiers" not in after_failed  # a failed login identifies no one
    assert succeeded["properties"] == {"success": True}
    assert succeeded["user_identifiers"] == {"email": "ada@example.com"}
    assert succeeded["request"]["path"] == "/login"
    assert "form" not in succeeded["request"].get("params", {})  # no collect_body
    assert after_success["user_identifiers"] == {"email": "ada@example.com"}
    assert after_success["request"]["request_id"] == succeeded["request"]["request_id"]
    assert signup["name"] == "sqreen.signup_track" and "properties" not in signup
    assert signup["user_identifiers"] == {"email": "bo@example.com", "id": "7"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: sqreen.auth_track(True, id=7.0),
            "auth_track's user identifiers must map str to str or int",
        ),
        (lambda: sqreen.signup_track(id=None), "signup_track's user identifiers must map str"),
        (lambda: sqreen.identify({"id": True}), "user_identifiers must map str to str or int"),
        (lambda: sqreen.identify(["id"]), "user_identifiers must be a dict of str to str or int"),
        (lambda: sqreen.identify({"id": "7"}, {"t": {1}}), "traits['t'] is a set"),
    ],
)
def test_helpers_reject_mistakes(spooler: sqreen.Spooler, call: Any, message: str) -> None:
    with pytest.raises(sqreen.InvalidEvent, match=message.replace("[", r"\[")):
        call()


PEER = "192.0.2.1"


def ip_seen(spool_path: Path, headers: dict[str, str]) -> str:
    """The client IP stored for a request from PEER carrying ``headers``."""
    flask_app().test_client().get("/checkout", headers=headers, environ_base={"REMOTE_ADDR": PEER})
    ip: str = stored_events(spool_path)[0]["request"]["ip"]
    return ip


@pytest.mark.parametrize(
    ("trusted", "header", "expected"),
    [
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "203.0.113.7:4711", "203.0.113.7"),
        (1, "[2001:db8::1]:443", "2001:db8::1"),
        # nginx, ALB and Google's load balancer append: the left is the client's to write.
        (1, "198.51.100.66, 203.0.113.7", "203.0.113.7"),
        (1, "unknown, 203.0.113.7", "203.0.113.7"),
        (1, "203.0.113.7, <script>", PEER),  # garbage where the client should be
        (2, "198.51.100.66, 203.0.113.7, 10.0.0.1", "203.0.113.7"),
        (2, "203.0.113.7", PEER),  # fewer entries than proxies: none can be trusted
        ("192.0.2.0/24, 10.0.0.0/8", "198.51.100.66, 203.0.113.7, 10.0.0.1", "203.0.113.7"),
        ("10.0.0.0/8", "203.0.113.7", PEER),  # the peer is no trusted proxy: header ignored
        (1, "", PEER),
        (1, None, PEER),
    ],
)
def test_client_ip_from_a_configured_header_read_from_the_right(
    spool_path: Path, trusted: int | str, header: str | None, expected: str
) -> None:
    sqreen.configure(path=spool_path, ip_header="X-Forwarded-For", trusted_proxies=trusted)
    headers = {} if header is None else {"X-Forwarded-For": header}
    assert ip_seen(spool_path, headers) == expected


def test_forwarding_headers_are_ignored_unless_configured(spool_path: Path) -> None:
    sqreen.configure(path=spool_path)
    assert ip_seen(spool_path, {"X-Forwarded-For": "203.0.113.7"}) == PEER


def test_rfc7239_forwarded_header(spool_path: Path) -> None:
    sqreen.configure(path=spool_path, ip_header="Forwarded", trusted_proxies=2)
    forwarded = 'for="[2001:db8::7]:80";proto=https, for=10.0.0.1'
    assert ip_seen(spool_path, {"Forwarded": forwarded}) == "2001:db8::7"


def test_scrubbing_settings(spool_path: Path) -> None:
    sqreen.configure(path=spool_path, strip_sensitive_properties=True, strip_sensitive_keys="plan")
    app = flask.Flask("settings")

    @app.route("/")
    def index() -> str:
        sqreen.track("e", {"properties": {"plan": "pro", "password": "kept: not a configured key"}})
        return "ok"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.test_client().get("/?plan=gold&password=x")
    sqreen.configure(path=spool_path, strip_sensitive_data=False)
    app.test_client().get("/?plan=gold&password=x")
    scrubbed, kept = stored_events(spool_path)
    assert scrubbed["properties"] == {"plan": PLACEHOLDER, "password": "kept: not a configured key"}
    assert scrubbed["request"]["params"]["query"] == {"plan": PLACEHOLDER, "password": "x"}
    assert kept["properties"]["plan"] == "pro"
    assert kept["request"]["params"]["query"] == {"plan": "gold", "password": "x"}


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.slow
def test_concurrent_threads_never_see_another_request(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:
    app = flask.Flask("threads")
    barrier = threading.Barrier(8, timeout=10)

    @app.route("/")
    def index() -> str:
        user = flask.request.args["user"]
        sqreen.identify({"email": user})
        if flask.request.args.get("wait"):
            barrier.wait()  # all eight requests are inside the app at once
        sqreen.track("concurrent", {"properties": {"user": user}})
        return user

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    def client(n: int) -> None:
        with httpx.Client() as http:
            for i in range(10):
                params = {"user": f"u{n}-{i}", **({"wait": "1"} if i == 0 else {})}
                assert http.get(url, params=params).text == f"u{n}-{i}"

    workers = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    server.shutdown()
    found = stored_events(spool_path)
    assert len(found) == 80
    for event in found:
        user = event["properties"]["user"]
        assert event["user_identifiers"] == {"email": user}
        assert event["request"]["params"]["query"]["user"] == user


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def async_endpoint(request: Request) -> PlainTextResponse:
        user = request.query_params["user"]
        sqreen.identify({"email": user})
        for _ in range(5):
            await asyncio.sleep(0)  # let the other requests' tasks run in between
        form = await request.form()
        sqreen.track("async", {"properties": {"user": user}, "collect_body": True})
        return PlainTextResponse(str(form.get("name", "")))

    def sync_endpoint(request: Request) -> PlainTextResponse:
        user = request.query_params["user"]
        sqreen.identify({"email": user})  # runs in a worker thread, with the request's context
        sqreen.track("sync", {"properties": {"user": user}})
        return PlainTextResponse(user)

    app = Starlette(
        routes=[
            Route("/async", async_endpoint, methods=["GET", "POST"]),
            Route("/sync", sync_endpoint),
        ]
    )
    return asgi.SqreenMiddleware(app)


def test_starlette_sync_and_async_endpoints(spooler: sqreen.Spooler, spool_path: Path) -> None:
    from starlette.testclient import TestClient

    with TestClient(starlette_app(), client=("203.0.113.9", 5000)) as client:
        response = client.post(
            "/async?user=ada", data={"name": "Ada", "secret": "s3"}, headers={"User-Agent": "t/1"}
        )
        assert response.text == "Ada"
        assert client.get("/sync?user=bo").text == "bo"
    asynchronous, synchronous = stored_events(spool_path)
    assert asynchronous["user_identifiers"] == {"email": "ada"}
    request = asynchronous["request"]
    assert len(request.pop("request_id")) == 32  # none sent: one made for the request
    assert request == {
        "ip": "203.0.113.9",
        "user_agent": "t/1",
        "path": "/async",
        "verb": "POST",
        "host": "testserver",
        "scheme": "http",
        "endpoint": "/async",
        "params": {"query": {"user": "ada"}, "form": {"name": "Ada", "secret": PLACEHOLDER}},
    }
    assert synchronous["user_identifiers"] == {"email": "bo"}
    assert synchronous["request"]["path"] == "/sync"


def test_concurrent_asyncio_requests_never_see_another_request(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:
    app = starlette_app()

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            replies = await asyncio.gather(
                *(client.post(f"/async?user=u{i}", data={"name": f"n{i}"}) for i in range(50))
            )
        assert [r.text for r in replies] == [f"n{i}" for i in range(50)]

    asyncio.run(run())
    found = stored_events(spool_path)
    assert len(found) == 50
    for event in found:
        user = event["properties"]["user"]
        assert event["user_identifiers"] == {"email": user}
        assert event["request"]["params"]["query"] == {"user": user}
        assert event["request"]["params"]["form"] == {"name": "n" + user[1:]}


def test_django_middleware(spool_path: Path) -> None:
    code = f"""
import django, sqreen
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

def view(request, step):
    sqreen.identify({{"email": request.GET["user"]}})
    properties = {{"name": request.POST.get("name")}}
    sqreen.track("django", {{"properties": properties, "collect_body": True}})
    return HttpResponse(request.POST.get("name", ""))

urlpatterns = [path("signup/<int:step>/", view)]
settings.configure(
    DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test",
    MIDDLEWARE=["sqreen.integrations.django.SqreenMiddleware"], INSTALLED_APPS=[],
)
django.setup()
from django.test import Client
sqreen.configure(path={str(spool_path)!r})
response = Client().post(
    "/signup/2/?user=ada", "name=Ada&password=hunter2",
    content_type="application/x-www-form-urlencoded",
    HTTP_USER_AGENT="django-test", REMOTE_ADDR="198.51.100.8",
)
assert response.content == b"Ada", response.content
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    (event,) = stored_events(spool_path)
    assert event["properties"] == {"name": "Ada"}
    assert event["user_identifiers"] == {"email": "ada"}
    request = event["request"]
    assert len(request.pop("request_id")) == 32
    assert request == {
        "ip": "198.51.100.8",
        "user_agent": "django-test",
        "path": "/signup/2/",
        "verb": "POST",
        "host": "testserver",
        "scheme": "http",
        "endpoint": "signup/<int:step>/",
        "params": {"query": {"user": "ada"}, "form": {"name": "Ada", "password": PLACEHOLDER}},
    }


def test_importing_sqreen_imports_no_web_framework() -> None:
    code = (
        "import sys, sqreen, sqreen.integrations.wsgi, sqreen.integrations.asgi, "
        "sqreen.integrations.django; "
        "print(sorted(m for m in ('flask', 'django', 'starlette', 'werkzeug') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# What a client may send, each within what an HTTP client sends at all (a URL under 64 KiB):
# (query string, urlencoded form body).
HOSTILE_REQUESTS = {
    # \x01 takes 6 bytes in JSON: 16 KiB of form becomes 96 KiB of event.
    "control-chars-form": ("", "&".join(f"f{i}={chr(1) * 1000}" for i in range(16))),
    "control-chars-query": ("&".join(f"c{i}={'%01' * 1000}" for i in range(16)), ""),
    "long-query-values": ("&".join(f"q{i}={'v' * 1024}" for i in range(60)), ""),
    "huge-name": ("n" * 60_000 + "=1", ""),
    "euro-values": ("&".join(f"e{i}={quote('€' * 1024)}" for i in range(6)), ""),
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def stored_request(spool_path: Path) -> dict[str, Any]:
    """The request object of the one stored event, which fits in an event; what was cut is
    marked (the whole object as truncated, or a name or value with an ellipsis)."""
    (event,) = stored_events(spool_path)
    assert len(orjson.dumps(event)) <= MAX_EVENT_BYTES
    request: dict[str, Any] = event["request"]
    names = [name for values in request.get("params", {}).values() for name in values]
    assert request.get("truncated") is True or any(name.endswith("…") for name in names)
    return request


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_a_client_cannot_push_flask_s_event_past_its_limit(
    spooler: sqreen.Spooler, spool_path: Path, case: str
) -> None:
    query, form = HOSTILE_REQUESTS[case]
    client = flask_app().test_client()
    answer = client.post(f"/checkout?user=a@b.c&{query}", data=form, headers=FORM)
    assert answer.status_code == 200  # track() raised InvalidEvent before: a 500
    assert stored_request(spool_path)["path"] == "/checkout"


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_a_client_cannot_push_starlette_s_event_past_its_limit(
    spooler: sqreen.Spooler, spool_path: Path, case: str
) -> None:
    from starlette.testclient import TestClient

    query, form = HOSTILE_REQUESTS[case]
    with TestClient(starlette_app()) as client:
        answer = client.post(f"/async?user=a@b.c&{query}", content=form, headers=FORM)
    assert answer.status_code == 200
    assert stored_request(spool_path)["path"] == "/async"


def test_a_malformed_setting_never_fails_a_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SQREEN_HEARTBEAT_DELAY=soon: every request answered 500 before, tracking or not. Now
    the request goes through, nothing is recorded, and the error is logged once and counted."""
    import sqreen.default

    monkeypatch.setenv("SQREEN_HEARTBEAT_DELAY", "soon")
    monkeypatch.setattr(sqreen.default, "misconfigured", 0)
    monkeypatch.setattr(sqreen.default, "_misconfigured_logged", -1e9)
    app = flask_app()

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="sqreen.spool"):
        for _ in range(3):
            assert client.get("/plain").data == b"plain"
            assert client.post("/checkout", data={"name": "n"}).data == b"n"
            assert client.post("/login", data={"email": "a@b.c", "password": "x"}).data == b"out"
    assert sqreen.flush().delivered == 0
    assert sqreen.default.misconfigured >= 9
    logged = [r.getMessage() for r in caplog.records if "settings are malformed" in r.getMessage()]
    assert len(logged) == 1 and "SQREEN_HEARTBEAT_DELAY" in logged[0]
    with pytest.raises(sqreen.ConfigError):
        sqreen.configure()  # an explicit call still says so
