"""Every example of the Sqreen documentation this project follows, and of the agent's own
docstrings, run exactly as written there: outside a request, in a Flask view and in a Starlette
endpoint. Each run is delivered to a real collector on loopback, and what it received is
checked.

The examples are copied verbatim from ``shared/reference/sqreen-track-custom-events.txt`` (the
page) and ``sqreen-agent-behaviour.md`` (the agent's docstrings). The page's ``event_name`` is a
variable the reader defines; the harness defines it. The page's last example is cut off in its
copy after ``"timestamp": event_date``; its closing ``})`` is the only text added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask
import pytest

import sqreen
from sqreen.integrations import asgi, wsgi

EVENT_NAME = "my_custom_event"

EXAMPLES = {
    "track-properties": """
import sqreen
sqreen.track(event_name, {"properties": {"foo": "bar"}})
""",
    "track-from-the-past": """
import sqreen
from datetime import datetime

event_date = datetime(2018, 3, 15, 14, 42, 0, 79043)
sqreen.track(event_name, {
    "properties": {"foo": "bar"},
    "timestamp": event_date
})
""",
    "identify": """
identify({"user_id": 42, "email": "foobar@example.com"})
""",
    "auth-track-success": """
auth_track(True, email="foobar@example.com")
""",
    "auth-track-failure": """
auth_track(False, user_id=42)
""",
    "signup-track": """
signup_track(email="foobar@example.com", user_id=42)
""",
}

# What reached the collector for each example: (name, properties, user identifiers) of each
# event, in order, then of the probe event the harness tracks after the example (None outside
# a request, where identify() has nothing to attach a user to).
PROBE = "probe"
SENT: dict[str, list[tuple[str, Any, Any]]] = {
    "track-properties": [(EVENT_NAME, {"foo": "bar"}, None)],
    "track-from-the-past": [(EVENT_NAME, {"foo": "bar"}, None)],
    "identify": [],
    "auth-track-success": [
        ("sqreen.auth_track", {"success": True}, {"email": "foobar@example.com"})
    ],
    "auth-track-failure": [("sqreen.auth_track", {"success": False}, {"user_id": 42})],
    "signup-track": [("sqreen.signup_track", None, {"email": "foobar@example.com", "user_id": 42})],
}
IDENTIFIED = {
    "identify": {"user_id": 42, "email": "foobar@example.com"},
    "auth-track-success": {"email": "foobar@example.com"},
    "signup-track": {"email": "foobar@example.com", "user_id": 42},
}


def run_example(name: str) -> None:
    """The example as written, with the names its text assumes (the docstrings' examples run
    inside the ``sqreen`` namespace), then the probe."""
    namespace: dict[str, Any] = {"event_name": EVENT_NAME}
    namespace.update({n: getattr(sqreen, n) for n in ("identify", "auth_track", "signup_track")})
    exec(compile(EXAMPLES[name], f"<example {name}>", "exec"), namespace)
    assert sqreen.track(PROBE)


def outside(name: str) -> None:
    run_example(name)


def in_flask(name: str) -> None:
    app = flask.Flask("reference")

    @app.route("/account/<int:account>", methods=["POST"])
    def view(account: int) -> str:
        run_example(name)
        return "ok"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    assert app.test_client().post("/account/7?from=docs").status_code == 200


def in_starlette(name: str) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    def endpoint(request: Request) -> PlainTextResponse:  # sync: run in a worker thread
        run_example(name)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/account/{account}", endpoint, methods=["POST"])])
    with TestClient(asgi.SqreenMiddleware(app)) as client:
        assert client.post("/account/7?from=docs").status_code == 200


WHERE: dict[str, tuple[Callable[[str], None], str | None]] = {
    "outside": (outside, None),
    "flask": (in_flask, "/account/<int:account>"),
    "starlette": (in_starlette, "/account/{account}"),
}


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_reference_example(spool_path: Path, collector: Any, example: str, where: str) -> None:
    spooler = sqreen.configure(path=spool_path, url=collector.url, strict=True)
    run, endpoint = WHERE[where]
    run(example)
    spooler.close(10)  # delivers what the delivery thread has not yet, as at exit
    assert spooler.health().total_failures == 0
    received = collector.accepted_events()
    identified = IDENTIFIED.get(example) if endpoint is not None else None
    expected = [*SENT[example], (PROBE, None, identified)]
    assert [
        (e["name"], e.get("properties"), e.get("user_identifiers")) for e in received
    ] == expected
    for event in received:
        if endpoint is None:
            assert "request" not in event
            continue
        request = event["request"]
        assert (request["verb"], request["path"], request["endpoint"]) == (
            "POST",
            "/account/7",
            endpoint,
        )
        assert request["params"] == {"query": {"from": "docs"}}
        assert request["request_id"] == received[-1]["request"]["request_id"]  # one request
    if example == "track-from-the-past":
        assert received[0]["timestamp"] == "2018-03-15T14:42:00.079043+00:00"
