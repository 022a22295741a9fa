"""Drop-in for the Sqreen agent: what the agent accepted is recorded with the agent's outcome
(lenient mode, the default, warns and counts), and a strict spooler refuses it instead."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import flask
import orjson
import pytest

import sqreen
from sqreen.integrations import wsgi
from sqreen.request.scrub import PLACEHOLDER

from .conftest import stored_events

SEVENTEEN = {f"p{i:02}": i for i in range(16, -1, -1)}  # given in reverse order


@pytest.fixture(params=["lenient", "strict"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(spool_path: Path, mode: str, **settings: Any) -> sqreen.Spooler:
    return sqreen.configure(path=spool_path, strict=mode == "strict", **settings)


# Each relaxed rule: the call, what the spool holds after it in lenient mode (None: nothing),
# the warning's kind, and what the error (strict) or the warning names.
RELAXED: dict[str, tuple[Callable[[], bool], Callable[[dict[str, Any]], bool] | None, str, str]] = {
    "unknown-key": (
        lambda: sqreen.track("e", {"properties": {"a": 1}, "color": "red"}),
        lambda event: event["properties"] == {"a": 1} and "color" not in event,
        "unknown_option",
        "unknown option key(s) 'color'",
    ),
    "misspelt-key": (
        lambda: sqreen.track("e", {"propreties": {"a": 1}}),
        lambda event: "properties" not in event,
        "unknown_option",
        "'propreties' (did you mean 'properties'?)",
    ),
    "17-properties": (
        lambda: sqreen.track("e", {"properties": SEVENTEEN}),
        lambda event: event["properties"] == {f"p{i:02}": i for i in range(16)},
        "too_many_properties",
        "has 17 entries; at most 16",
    ),
    "reserved-name": (
        lambda: sqreen.track("sq.anything"),
        None,
        "reserved_name",
        "'sq.' are reserved",
    ),
    "collect-body-not-bool": (
        lambda: sqreen.track("e", {"collect_body": "yes"}),
        lambda event: event["name"] == "e",
        "collect_body_not_bool",
        "collect_body must be a bool, not str",
    ),
    "success-not-bool": (
        lambda: sqreen.auth_track(1, email="a@b.c"),  # type: ignore[arg-type]
        lambda event: event["properties"] == {"success": True},
        "success_not_bool",
        "success must be a bool, not int",
    ),
    "auth-without-identifiers": (
        lambda: sqreen.auth_track(True),
        None,
        "auth_track_without_identifiers",
        "auth_track needs at least one user identifier",
    ),
    "signup-without-identifiers": (
        lambda: sqreen.signup_track(),
        None,
        "signup_track_without_identifiers",
        "signup_track needs at least one user identifier",
    ),
}


def events_in(spool_path: Path) -> list[dict[str, Any]]:
    return stored_events(spool_path) if spool_path.exists() else []  # made at the first event


@pytest.mark.parametrize("case", sorted(RELAXED))
def test_each_relaxed_rule_in_both_modes(
    spool_path: Path, mode: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    call, stored, kind, named = RELAXED[case]
    spooler = make(spool_path, mode)
    if mode == "strict":
        with pytest.raises(sqreen.InvalidEvent, match=re.escape(named)):
            call()
        assert events_in(spool_path) == []
        assert spooler.health().warnings == {}
        return
    with caplog.at_level(logging.WARNING, logger="sqreen"):
        recorded = call()
    events = events_in(spool_path)
    if stored is None:
        assert recorded is False and events == []
    else:
        assert recorded is True
        (event,) = events
        assert stored(event)
    assert spooler.health().warnings == {kind: 1}
    (warning,) = [r for r in caplog.records if r.name == "sqreen"]
    assert warning.levelno == logging.WARNING and named in warning.getMessage()


def test_strict_from_the_environment(spool_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQREEN_SPOOL_STRICT", "1")
    sqreen.configure(path=spool_path)
    with pytest.raises(sqreen.InvalidEvent, match="unknown option key"):
        sqreen.track("e", {"colour": 1})


def test_a_warning_is_logged_once_per_interval_and_every_call_counted(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spooler = make(spool_path, "lenient")
    with caplog.at_level(logging.WARNING, logger="sqreen"):
        for i in range(1000):
            assert sqreen.track("e", {"properties": {"i": i}, "colour": "red"})
            assert sqreen.track("sq.reserved") is False
    warnings = [r.getMessage() for r in caplog.records if r.name == "sqreen"]
    assert len(warnings) == 2  # one per kind, not one per call
    assert any("unknown option key(s) 'colour'" in w for w in warnings)
    assert any("'sq.reserved' was not recorded" in w for w in warnings)
    assert spooler.health().warnings == {"unknown_option": 1000, "reserved_name": 1000}
    assert len(stored_events(spool_path)) == 1000


def test_int_identifiers_are_sent_as_given(spool_path: Path) -> None:
    make(spool_path, "strict")  # not a relaxed rule: accepted in both modes
    assert sqreen.auth_track(False, user_id=42)
    assert sqreen.signup_track(email="a@b.c", user_id=42)
    assert sqreen.track("e", {"user_identifiers": {"user_id": 42}})
    for event in stored_events(spool_path):
        assert event["user_identifiers"]["user_id"] == 42  # a JSON int, not "42"


class Frozen(Mapping[str, Any]):
    """A mapping that is not a dict, as some frameworks hand out."""

    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_any_mapping_is_accepted_and_read_once(spool_path: Path) -> None:
    make(spool_path, "strict")
    options = MappingProxyType(
        {"properties": Frozen(plan="pro"), "user_identifiers": Frozen(user_id=7)}
    )
    assert sqreen.track("e", options)
    (event,) = stored_events(spool_path)
    assert event["properties"] == {"plan": "pro"}
    assert event["user_identifiers"] == {"user_id": 7}


def test_invalid_event_is_still_caught_as_the_agent_s_type_error(spool_path: Path) -> None:
    make(spool_path, "lenient")
    for call in (
        lambda: sqreen.track(42),  # type: ignore[arg-type]
        lambda: sqreen.track("e", {"timestamp": "2018-03-15"}),
    ):
        with pytest.raises(TypeError):
            call()


def identifying_app(handler: Callable[[], Any]) -> flask.Flask:
    app = flask.Flask("compat")

    @app.route("/", methods=["GET", "POST"])
    def index() -> str:
        handler()
        return "ok"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def test_identify_with_ints_and_the_agent_s_comparison(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spooler = make(spool_path, "strict")  # a warning, never an error, in both modes

    def handler() -> None:
        sqreen.identify({"user_id": 42, "email": "foobar@example.com"})
        sqreen.track("implicit")
        # The same user, an identifier typed as a string: equal, as identifiers compare.
        sqreen.track("same", {"user_identifiers": {"user_id": "42", "email": "foobar@example.com"}})
        sqreen.track("other", {"user_identifiers": {"user_id": 7}})

    with caplog.at_level(logging.WARNING, logger="sqreen"):
        identifying_app(handler).test_client().get("/")
    implicit, same, other = stored_events(spool_path)
    assert implicit["user_identifiers"] == {"user_id": 42, "email": "foobar@example.com"}
    assert same["user_identifiers"]["user_id"] == "42"
    assert other["user_identifiers"] == {"user_id": 7}  # the event keeps its own
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "sqreen"]
    assert "'other'" in warning and "differ from those given to identify()" in warning
    assert spooler.health().warnings == {"identifiers_differ": 1}


def test_successful_auth_and_signup_identify_the_request(spool_path: Path) -> None:
    make(spool_path, "strict")

    def handler() -> None:
        sqreen.auth_track(False, user_id=1)
        sqreen.track("after_failure")
        sqreen.auth_track(True, user_id=2)
        sqreen.track("after_success")
        sqreen.signup_track(user_id=3)
        sqreen.track("after_signup")

    identifying_app(handler).test_client().get("/")
    events = {event["name"]: event for event in stored_events(spool_path)}
    assert "user_identifiers" not in events["after_failure"]
    assert events["after_success"]["user_identifiers"] == {"user_id": 2}
    assert events["after_signup"]["user_identifiers"] == {"user_id": 3}


SECRET = "s3cr3t-in-json"
JSON_BODY = {
    "item": "shoes",
    "qty": 2,
    "payment": {"card_holder": "Ada", "password": SECRET, "tags": ["a", "b"]},
}


def body_app(seen: list[Any]) -> flask.Flask:
    app = flask.Flask("body")

    @app.route("/buy", methods=["POST"])
    def buy() -> str:
        sqreen.track("with_body", {"collect_body": True})
        sqreen.track("without_body")
        seen.append(flask.request.get_json(silent=True) or flask.request.form.to_dict())
        return "ok"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def spool_bytes(spool_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in spool_path.parent.glob(f"{spool_path.name}*"))


def test_flask_json_body_with_and_without_collect_body(spool_path: Path) -> None:
    make(spool_path, "strict")
    seen: list[Any] = []
    answer = body_app(seen).test_client().post("/buy?ref=mail", json=JSON_BODY)
    assert answer.status_code == 200
    assert seen == [JSON_BODY]  # the application read its body intact
    with_body, without_body = stored_events(spool_path)
    assert with_body["request"]["params"] == {
        "query": {"ref": "mail"},
        "json": {
            "item": "shoes",
            "qty": 2,
            "payment": {"card_holder": "Ada", "password": PLACEHOLDER, "tags": ["a", "b"]},
        },
    }
    assert without_body["request"]["params"] == {"query": {"ref": "mail"}}
    assert with_body["request"]["request_id"] == without_body["request"]["request_id"]
    assert SECRET.encode() not in spool_bytes(spool_path)


def test_flask_form_body_with_collect_body(spool_path: Path) -> None:
    make(spool_path, "strict")
    seen: list[Any] = []
    form = {"item": "shoes", "password": SECRET}
    body_app(seen).test_client().post("/buy", data=form)
    assert seen == [form]
    with_body, without_body = stored_events(spool_path)
    assert with_body["request"]["params"] == {"form": {"item": "shoes", "password": PLACEHOLDER}}
    assert "params" not in without_body["request"]
    assert SECRET.encode() not in spool_bytes(spool_path)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (orjson.dumps({"blob": "x" * 20_000}), {"Content-Type": "application/json"}),
        (b"[1, 2, 3]", {"Content-Type": "application/json"}),
        (b"{not json", {"Content-Type": "application/json"}),
        (b'{"a": 1}', {"Content-Type": "text/plain"}),
    ],
    ids=["over-the-limit", "not-an-object", "not-json", "not-a-body-kind-we-read"],
)
def test_bodies_that_are_not_captured(
    spool_path: Path, body: bytes, headers: dict[str, str]
) -> None:
    make(spool_path, "strict")
    app = flask.Flask("raw")
    seen: list[bytes] = []

    @app.route("/", methods=["POST"])
    def index() -> str:
        sqreen.track("e", {"collect_body": True})
        seen.append(flask.request.get_data())
        return "ok"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    assert app.test_client().post("/", data=body, headers=headers).status_code == 200
    assert seen == [body]
    (event,) = stored_events(spool_path)
    assert "params" not in event["request"]


def test_starlette_json_body_with_collect_body(spool_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from sqreen.integrations import asgi

    make(spool_path, "strict")

    async def buy(request: Request) -> JSONResponse:
        sqreen.track("with_body", {"collect_body": True})
        return JSONResponse(await request.json())

    app = asgi.SqreenMiddleware(Starlette(routes=[Route("/buy/{kind}", buy, methods=["POST"])]))
    with TestClient(app) as client:
        answer = client.post("/buy/shoes", json=JSON_BODY)
    assert answer.json() == JSON_BODY  # the application read its body intact
    (event,) = stored_events(spool_path)
    assert event["request"]["endpoint"] == "/buy/{kind}"
    assert event["request"]["params"]["json"]["payment"]["password"] == PLACEHOLDER
    assert SECRET.encode() not in spool_bytes(spool_path)
