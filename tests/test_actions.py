"""Security responses end to end: a real collector pushes actions in its answers, real web
apps (Flask under a threaded server, Starlette) enforce them, and processes sharing a spool
see each change."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import flask
import httpx
import orjson
import pytest

import sqreen
from sqreen.cli.reference import Answer
from sqreen.integrations import asgi, wsgi
from sqreen.security.action_store import add_operator_action
from sqreen.security.actions import ActionSet, read_action
from sqreen.storage.store import Store
from sqreen.wire import check_batch

from .conftest import stored_events

FAST = {"heartbeat_delay": 3600, "retry_attempts": 1, "http_timeout": 2.0}


def with_actions(actions: list[Any] | None) -> Callable[[dict[str, Any]], Answer]:
    """A collector behaviour: accept the batch, and answer with this list of actions."""

    def behaviour(batch: dict[str, Any]) -> Answer:
        assert check_batch(batch)[0] is None
        return Answer(200, orjson.dumps({} if actions is None else {"actions": actions}))

    return behaviour


def block_ip(action_id: str, *networks: str, **extra: Any) -> dict[str, Any]:
    return {
        "action": "block_ip",
        "action_id": action_id,
        "parameters": {"ip_cidr": list(networks)},
        **extra,
    }


def redirect_ip(action_id: str, network: str, url: str) -> dict[str, Any]:
    return {
        "action": "redirect_ip",
        "action_id": action_id,
        "parameters": {"ip_cidr": [network], "url": url},
    }


def user_action(
    name: str, action_id: str, *users: dict[str, Any], **parameters: Any
) -> dict[str, Any]:
    return {
        "action": name,
        "action_id": action_id,
        "parameters": {"users": list(users), **parameters},
    }


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def login_app() -> flask.Flask:
    app = flask.Flask("shop")

    @app.route("/login", methods=["POST"])
    def login() -> str:
        ok = flask.request.form["password"] == "right"
        sqreen.auth_track(ok, user_id=int(flask.request.form["user_id"]))
        return "in" if ok else "out"

    @app.route("/me")
    def me() -> str:
        sqreen.identify({"user_id": int(flask.request.args["user_id"])})
        return "you"

    @app.route("/careless")
    def careless() -> str:
        with contextlib.suppress(sqreen.UserBlocked):  # swallowed: the middleware still answers
            sqreen.identify({"user_id": int(flask.request.args["user_id"])})
        return "you, carelessly"

    @app.route("/")
    def index() -> str:
        return "home"

    app.wsgi_app = wsgi.SqreenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


@pytest.fixture
def served() -> Iterator[str]:
    server = make_server("127.0.0.1", 0, login_app(), ThreadingWSGIServer, QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def actions_version(spool_path: Path) -> int:
    if not spool_path.exists():
        return 0
    with sqlite3.connect(spool_path) as conn:
        try:
            row = conn.execute("SELECT value FROM counters WHERE name = 'actions.version'")
        except sqlite3.OperationalError:
            return 0
        found = row.fetchone()
    return int(found[0]) if found else 0


def push(collector: Any, actions: list[Any] | None) -> None:
    """Deliver one event, so that the collector's answer carries ``actions``; wait until the
    answer was handled (by sqreen.flush() or by the delivery thread, whichever got the event:
    its actions are stored before its batch is settled)."""
    answered = len(collector.requests)
    collector.respond_with(with_actions(actions))
    assert sqreen.track("heartbeat")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sqreen.flush(5).pending == 0 and len(collector.requests) > answered:
            return
        time.sleep(0.02)
    raise AssertionError("the collector's answer was not handled in time")


def test_each_action_kind_pushed_by_the_collector(
    spool_path: Path, collector: Any, served: str
) -> None:
    sqreen.configure(path=spool_path, url=collector.url, ip_header="X-Forwarded-For", **FAST)
    push(
        collector,
        [
            block_ip("ip-1", "203.0.113.0/24", "2001:db8::/32"),
            {**block_ip("ip-2", "198.51.100.7"), "action": "redirect_ip"}
            | {"parameters": {"ip_cidr": ["198.51.100.7"], "url": "https://example.com/away"}},
            user_action("block_user", "user-1", {"user_id": 42}),
            user_action("redirect_user", "user-2", {"user_id": 7}, url="https://example.com/bye"),
        ],
    )
    with httpx.Client(base_url=served, follow_redirects=False) as http:

        def get(path: str, ip: str = "192.0.2.1", **headers: str) -> httpx.Response:
            return http.get(path, headers={"X-Forwarded-For": ip, **headers})

        assert get("/").text == "home"
        blocked = get("/", "203.0.113.9")
        assert blocked.status_code == 403 and "blocked" in blocked.text
        assert get("/", "203.0.113.9", Accept="application/json").json() == {
            "error": "blocked",
            "action_id": "ip-1",
        }
        assert get("/", "[2001:db8::1]:443").status_code == 403  # v6, with port and brackets
        assert get("/", "2001:db9::1").text == "home"
        moved = get("/", "198.51.100.7")
        assert (moved.status_code, moved.headers["Location"]) == (303, "https://example.com/away")
        assert get("/me?user_id=1").text == "you"
        assert get("/me?user_id=42").status_code == 403
        assert get("/careless?user_id=42").status_code == 403  # the exception was swallowed
        bye = get("/me?user_id=7")
        assert (bye.status_code, bye.headers["Location"]) == (303, "https://example.com/bye")
        assert get("/", "203.0.113.9, not-an-ip").text == "home"  # garbage: the peer, loopback
        # The client's own entry, left of the one its proxy appended, decides nothing.
        assert get("/", "192.0.2.1, 203.0.113.9").status_code == 403
        assert get("/", "203.0.113.9, 192.0.2.1").text == "home"
    names = [(e["name"], e.get("properties")) for e in stored_events(spool_path)]
    assert (
        "sq.action.block_ip",
        {"output": {"ip_address": "203.0.113.9"}, "action_id": "ip-1", "requests": 1},
    ) in names
    assert (
        "sq.action.block_user",
        {"output": {"user": {"user_id": 42}}, "action_id": "user-1", "requests": 1},
    ) in names
    assert (
        "sq.action.redirect_user",
        {"output": {"user": {"user_id": 7}}, "action_id": "user-2", "requests": 1},
    ) in names


def test_a_reload_replaces_the_list_an_empty_one_clears_it_a_missing_key_keeps_it(
    spool_path: Path, collector: Any
) -> None:
    spooler = sqreen.configure(path=spool_path, url=collector.url, **FAST)
    now = time.time()
    push(collector, [block_ip("a", "10.0.0.0/8"), block_ip("b", "10.1.0.0/16")])
    assert {a.action_id for a in spooler.enforcer.current().actions} == {"a", "b"}
    push(collector, None)
    assert {a.action_id for a in spooler.enforcer.current().actions} == {"a", "b"}
    push(collector, [block_ip("b", "10.1.0.0/16")])
    assert spooler.enforcer.current().for_ip("10.2.0.1", now) is None
    assert spooler.enforcer.current().for_ip("10.1.0.1", now) is not None
    push(collector, [])
    assert not spooler.enforcer.current()


def test_malformed_and_unknown_actions_are_skipped_and_never_stop_the_others(
    spool_path: Path, collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spooler = sqreen.configure(path=spool_path, url=collector.url, **FAST)
    with caplog.at_level(logging.WARNING, logger="sqreen"):
        push(
            collector,
            [
                {"action": "launch_missiles", "action_id": "x", "parameters": {}},
                block_ip("bad-ip", "300.1.2.3"),
                block_ip("no-list"),
                {
                    "action": "block_user",
                    "action_id": "bad-user",
                    "parameters": {"users": [{"id": 1.5}]},
                },
                {**block_ip("bad-duration", "10.0.0.1"), "duration": "soon"},
                {
                    "action": "redirect_ip",
                    "action_id": "no-url",
                    "parameters": {"ip_cidr": ["10.0.0.2"]},
                },
                "not an object",
                redirect_ip("open-bracket", "10.0.0.3", "http://[::1"),  # urlsplit raised
                redirect_ip("nul", "10.0.0.4", "https://example.com/\x00"),
                redirect_ip("esc", "10.0.0.5", "https://example.com/\x1b[2J"),
                redirect_ip("bad-idna", "10.0.0.6", "https://a..b\u00e9/"),
                {**block_ip("forever-and-more", "10.0.0.7"), "duration": 1e300},
                block_ip("the-world", "0.0.0.0/0"),
                block_ip("the-v6-world", "::/0"),
                block_ip("too-wide", "10.0.0.0/7"),
                block_ip("loopback", "127.0.0.1"),
                block_ip("v6-loopback", "::1"),
                block_ip("good", "192.0.2.0/24"),
                redirect_ip(
                    "idna", "198.51.100.0/24", "https://b\u00fccher.example:8443/\u00e9?q=\u00e9"
                ),
            ],
        )
    live = spooler.enforcer.current()
    assert [a.action_id for a in live.actions] == ["good", "idna"]
    assert live.for_ip("192.0.2.200", time.time()) is not None
    moved = live.for_ip("198.51.100.1", time.time())
    assert moved is not None
    assert moved.url == "https://xn--bcher-kva.example:8443/%C3%A9?q=%C3%A9"
    assert spooler.health().warnings == {"action_unknown": 1, "action_malformed": 16}
    assert sqreen.flush(5).failed == 0  # a ValueError escaped flush() and close() before
    spooler.close()
    assert any("launch_missiles" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_an_action_expires_its_duration_after_it_was_received(
    spool_path: Path, collector: Any
) -> None:
    spooler = sqreen.configure(path=spool_path, url=collector.url, **FAST)
    push(collector, [{**block_ip("brief", "192.0.2.1"), "duration": 1.0}])
    assert spooler.enforcer.current().for_ip("192.0.2.1", time.time()) is not None
    push(collector, [{**block_ip("brief", "192.0.2.1"), "duration": 1.0}])  # not extended
    time.sleep(1.2)
    assert spooler.enforcer.current().for_ip("192.0.2.1", time.time()) is None


def test_operator_actions_survive_a_collector_reload(spool_path: Path, collector: Any) -> None:
    spooler = sqreen.configure(path=spool_path, url=collector.url, **FAST)
    push(collector, [block_ip("theirs", "192.0.2.0/24")])
    operator = read_action(block_ip("ours", "198.51.100.0/24"), time.time(), "operator")
    add_operator_action(spooler._store, operator, time.time())
    spooler.enforcer.invalidate()
    push(collector, [])  # the collector's list, cleared
    assert [a.action_id for a in spooler.enforcer.current().actions] == ["ours"]


WATCHER = """
import sys, time, sqreen
spooler = sqreen.Spooler(path=sys.argv[1])
print("ready", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if spooler.enforcer.current().for_ip("192.0.2.77", time.time()) is not None:
        print("blocked", time.time(), flush=True)
        break
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_another_process_on_the_spool_enforces_a_change_within_two_seconds(
    spool_path: Path, collector: Any
) -> None:
    sqreen.configure(path=spool_path, url=collector.url, **FAST)
    push(collector, [])  # the spool exists, with its actions table
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(spool_path)], stdout=subprocess.PIPE, text=True
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # the watcher has looked at least once before the change
    changed = time.time()
    push(collector, [block_ip("late", "192.0.2.0/24")])
    line = watcher.stdout.readline().split()
    watcher.wait(10)
    assert line[0] == "blocked"
    assert float(line[1]) - changed < 2.0


def test_the_ip_lookup_with_ten_thousand_ranges() -> None:
    rng = random.Random(7)
    networks = {f"{ipaddress.IPv4Address(rng.getrandbits(32) & ~0xFF)}/24" for _ in range(10_000)}
    action = read_action(block_ip("many", *sorted(networks)), time.time())
    v6 = read_action(block_ip("six", "2001:db8::/48", "2001:db8:0:1::/64"), time.time())
    live = ActionSet([action, v6])
    now = time.time()
    for network in rng.sample(sorted(networks), 200):
        inside = ipaddress.ip_network(network)[rng.randrange(256)]
        assert live.for_ip(str(inside), now) is action
    prefixes = {int(ipaddress.ip_network(n).network_address) for n in networks}
    for _ in range(5000):  # random addresses: blocked exactly when their /24 is listed
        address = rng.getrandbits(32)
        listed = address & ~0xFF in prefixes
        assert (live.for_ip(str(ipaddress.IPv4Address(address)), now) is action) == listed
    assert live.for_ip("2001:db8::5", now) is v6
    assert live.for_ip("::ffff:" + str(ipaddress.ip_network(sorted(networks)[0])[1]), now) is action
    for garbage in ("", "300.1.1.1", "1.2.3", "::g", "<script>"):
        assert live.for_ip(garbage, now) is None


def test_overlapping_ranges_blocks_before_redirects() -> None:
    now = time.time()
    redirect = read_action(
        {
            "action": "redirect_ip",
            "action_id": "r",
            "parameters": {"ip_cidr": ["10.0.0.0/8"], "url": "https://x.example/"},
        },
        now,
    )
    block = read_action(block_ip("b", "10.1.0.0/16"), now)
    live = ActionSet([redirect, block])
    assert live.for_ip("10.1.2.3", now) is block
    assert live.for_ip("10.2.0.1", now) is redirect
    assert live.for_ip("11.0.0.1", now) is None
    low, high = (read_action(block_ip(n, n), now) for n in ("10.0.0.0/25", "10.0.0.128/25"))
    adjacent = ActionSet([high, low])  # disjoint, touching: no sweep needed
    assert [adjacent.for_ip(f"10.0.0.{i}", now) for i in (0, 127, 128, 255)] == [
        low,
        low,
        high,
        high,
    ]
    assert (
        adjacent.for_ip("10.0.1.0", now) is None and adjacent.for_ip("9.255.255.255", now) is None
    )


def test_starlette_blocks_users_and_ips(spool_path: Path, collector: Any) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    sqreen.configure(path=spool_path, url=collector.url, **FAST)
    push(
        collector,
        [block_ip("ip", "203.0.113.0/24"), user_action("block_user", "u", {"email": "a@b.c"})],
    )

    async def me(request: Request) -> PlainTextResponse:
        sqreen.identify({"email": request.query_params["email"]})
        return PlainTextResponse("you")

    def careless(request: Request) -> PlainTextResponse:  # sync, in a worker thread
        try:
            sqreen.identify({"email": request.query_params["email"]})
        except sqreen.UserBlocked as exc:
            assert exc.action_id == "u" and exc.url is None
        return PlainTextResponse("you")

    app = asgi.SqreenMiddleware(Starlette(routes=[Route("/me", me), Route("/careless", careless)]))
    with TestClient(app, client=("192.0.2.1", 5000), raise_server_exceptions=False) as client:
        assert client.get("/me?email=x@y.z").text == "you"
        assert client.get("/me?email=a@b.c").status_code == 403
        assert client.get("/careless?email=a@b.c").status_code == 403
    with TestClient(app, client=("203.0.113.5", 5000)) as client:
        assert client.get("/me?email=x@y.z").status_code == 403


def test_the_actions_command_and_a_user_typed_as_a_string(
    spool_path: Path, collector: Any, served: str
) -> None:
    from .test_cli import cli

    spooler = sqreen.configure(path=spool_path, url=collector.url, **FAST)
    push(collector, [block_ip("theirs", "192.0.2.0/24")])
    added = cli(spool_path, "actions", "block-user", "user_id=42", "--duration", "1h")
    assert added.exit_code == 0, added.output
    assert (
        cli(spool_path, "actions", "redirect-ip", "198.51.100.0/24", "--url", "ftp://x").exit_code
        == 2
    )
    assert cli(spool_path, "actions", "block-ip", "300.1.1.1").exit_code == 2
    listed = orjson.loads(cli(spool_path, "actions", "--json").stdout)
    by_source = {a["source"]: a for a in listed}
    assert by_source["collector"]["action_id"] == "theirs"
    assert by_source["operator"]["parameters"] == {"users": [{"user_id": "42"}]}
    assert by_source["operator"]["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
    table = cli(spool_path, "actions").stdout
    assert "block_user" in table and "user_id=42" in table and "192.0.2.0/24" in table
    spooler.enforcer.invalidate()  # (another process would see it within a second)
    with httpx.Client(base_url=served) as http:
        assert http.get("/me?user_id=42").status_code == 403  # the app identified the int 42
        push(collector, [])  # a collector reload: the operator's action stays
        assert http.get("/me?user_id=42").status_code == 403
        operator_id = by_source["operator"]["action_id"]
        assert cli(spool_path, "actions", "remove", operator_id).exit_code == 0
        assert cli(spool_path, "actions", "remove", operator_id).exit_code == 1
        spooler.enforcer.invalidate()
        assert http.get("/me?user_id=42").text == "you"
    assert cli(spool_path, "actions").stdout.strip() == "no security responses"


@pytest.mark.slow
def test_the_playbook_end_to_end_blocks_within_two_seconds(
    spool_path: Path, tmp_path: Path, served: str
) -> None:
    from .test_cli import cli
    from .test_cli_processes import Collect

    out = tmp_path / "received.jsonl"
    collect = Collect(out, "--block-after", "5", "--window", "10m", "--block-for", "1h")
    try:
        sqreen.configure(path=spool_path, url=collect.url, heartbeat_delay=1)
        with httpx.Client(base_url=served) as http:
            for _ in range(5):
                answer = http.post("/login", data={"user_id": "42", "password": "guess"})
                assert answer.text == "out"
            fifth = time.monotonic()
            while http.get("/me?user_id=42").status_code != 403:
                assert time.monotonic() - fifth < 2.0, "not blocked within 2 s"
                time.sleep(0.05)
            print(f"blocked {time.monotonic() - fifth:.2f} s after the fifth failure")
            assert http.get("/me?user_id=7").text == "you"  # another user is not
        listed = orjson.loads(cli(spool_path, "actions", "--json").stdout)
        assert [(a["action"], a["parameters"]) for a in listed] == [
            ("block_user", {"users": [{"user_id": 42}]})
        ]
        assert listed[0]["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
    finally:
        collect.stop()
    restarted = Collect(out, "--block-after", "5")  # its actions were kept beside --out
    try:
        answer = httpx.post(restarted.url, content=orjson.dumps(_batch()))
        assert [a["action"] for a in answer.json()["actions"]] == ["block_user"]
    finally:
        restarted.stop()


def _batch() -> dict[str, Any]:
    from .test_cli_processes import batch, event

    return batch(event())


def test_django_answers_blocked_users_and_ips(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    now = time.time()
    for document in (
        user_action("block_user", "u", {"email": "ada"}),
        block_ip("ip", "203.0.113.0/24"),
    ):
        add_operator_action(spooler._store, read_action(document, now, "operator"), now)
    spooler.close()
    code = f"""
import contextlib, django, sqreen
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

def me(request):
    sqreen.identify({{"email": request.GET["user"]}})
    return HttpResponse("you")

def careless(request):
    with contextlib.suppress(sqreen.UserBlocked):
        sqreen.identify({{"email": request.GET["user"]}})
    return HttpResponse("you")

urlpatterns = [path("me/", me), path("careless/", careless)]
settings.configure(
    DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test",
    MIDDLEWARE=["sqreen.integrations.django.SqreenMiddleware"], INSTALLED_APPS=[],
)
django.setup()
from django.test import Client
sqreen.configure(path={str(spool_path)!r})
client = Client(REMOTE_ADDR="192.0.2.1")
print(client.get("/me/?user=bo").status_code, client.get("/me/?user=ada").status_code,
      client.get("/careless/?user=ada").status_code,
      Client(REMOTE_ADDR="203.0.113.4").get("/me/?user=bo").status_code,
      client.get("/me/?user=ada", HTTP_ACCEPT="application/json").json()["action_id"])
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["200", "403", "403", "403", "u"]


@pytest.mark.slow
def test_a_forked_child_enforces_a_change_made_after_the_fork(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("created")  # the spool exists
    assert not spooler.enforcer.current()  # loaded (empty) before the fork
    pid = os.fork()
    if pid == 0:  # the child: waits for the parent's change, exits 0 once it enforces it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if spooler.enforcer.current().for_ip("192.0.2.9", time.time()) is not None:
                os._exit(0)
            time.sleep(0.02)
        os._exit(1)
    time.sleep(0.3)
    now = time.time()
    add_operator_action(
        spooler._store, read_action(block_ip("f", "192.0.2.0/24"), now, "operator"), now
    )
    _, status = os.waitpid(pid, 0)
    spooler.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_action_received_before_the_clock_stepped_back_lasts_its_duration_at_most(
    spool_path: Path,
) -> None:
    from sqreen.security.action_store import load_actions
    from sqreen.storage.store import Store

    spooler = sqreen.Spooler(path=spool_path)
    ahead = time.time() + 86400  # the clock, before it stepped back a day
    action = read_action(
        {
            "action": "block_ip",
            "parameters": {"ip_cidr": ["10.0.0.0/8"]},
            "action_id": "a",
            "duration": 8,
        },
        ahead,
        "operator",
    )
    add_operator_action(spooler._store, action, ahead)
    spooler.close()
    store = Store(spooler.settings)
    with store.write() as conn:
        (loaded,) = load_actions(conn)
    store.close()
    assert loaded.expires_at is not None and loaded.expires_at <= time.time() + 8


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.slow
def test_an_expired_action_never_hides_a_live_one(spool_path: Path) -> None:
    """A block for 1 s and a permanent one on the same range and user: once the first
    expires, the second holds (the compiled table kept the first, then found it expired)."""
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("opened")  # the spool made and migrated before the clock starts
    now = time.time()
    for action_id, duration in (("brief", 1.0), ("forever", None)):
        for document in (
            block_ip(f"{action_id}-ip", "10.0.0.0/8", duration=duration),
            {
                **user_action("block_user", f"{action_id}-user", {"user_id": 7}),
                "duration": duration,
            },
        ):
            add_operator_action(spooler._store, read_action(document, now, "operator"), now)
    enforcer = spooler.enforcer
    assert enforcer.current().for_ip("10.1.2.3", time.time()).action_id == "brief-ip"  # type: ignore[union-attr]
    time.sleep(max(0.0, now + 1.05 - time.time()))
    for _ in range(3):  # before and after the set is compiled again without the expired ones
        now = time.time()
        found_ip = enforcer.current().for_ip("10.1.2.3", now)
        found_user = enforcer.current().for_user({"user_id": 7}, now)
        assert found_ip is not None and found_ip.action_id == "forever-ip"
        assert found_user is not None and found_user.action_id == "forever-user"
        time.sleep(0.05)
    assert wait_for(lambda: len(enforcer.current().actions) == 2)
    spooler.close()


@pytest.mark.slow
def test_a_replaced_spool_is_the_one_enforced(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path, heartbeat_delay=3600)
    now = time.time()
    old = read_action(block_ip("old", "192.0.2.0/24"), now, "operator")
    add_operator_action(spooler._store, old, now)
    assert spooler.enforcer.current().for_ip("192.0.2.1", now) is not None
    for name in spool_path.parent.iterdir():  # rm spool.db*, as a cleanup job would
        name.unlink()
    spooler._upkeep._maintain()  # starts a fresh spool at the path
    new = read_action(block_ip("new", "198.51.100.0/24"), now, "operator")
    add_operator_action(spooler._store, new, now)
    assert wait_for(lambda: spooler.enforcer.current().for_ip("198.51.100.7", time.time()))
    assert spooler.enforcer.current().for_ip("192.0.2.1", time.time()) is None
    spooler.close()


def test_an_unchanged_list_changes_nothing_and_a_changed_one_compiles_off_the_request(
    spool_path: Path,
) -> None:
    from sqreen.security.action_store import actions_version, replace_collector_actions

    spooler = sqreen.Spooler(path=spool_path)
    store = spooler._store
    listed = [block_ip(f"r{i}", f"10.{i // 256}.{i % 256}.0/24") for i in range(10_000)]
    actions = [read_action(d, time.time(), "collector") for d in listed]
    assert replace_collector_actions(store, actions, time.time()) is True
    with store.write() as conn:
        version = actions_version(conn)
    assert replace_collector_actions(store, actions, time.time() + 5) is False
    with store.write() as conn:
        assert actions_version(conn) == version  # no process reloads it
    enforcer = spooler.enforcer
    first = enforcer.current()
    assert len(first.actions) == 10_000  # the first set is compiled by the first caller
    # Another process (here: another store) adds a block: the request that notices it is
    # answered with the set it had, while a thread of the enforcer's compiles the new one.
    other = Store(spooler.settings)
    added = read_action(block_ip("more", "203.0.113.0/24"), time.time(), "operator")
    add_operator_action(other, added, time.time())
    other.close()
    enforcer._next_look = 0.0  # the once-a-second look is due
    assert enforcer.current() is first
    assert wait_for(lambda: enforcer.current() is not first)
    assert enforcer.current().for_ip("203.0.113.9", time.time()) is not None
    spooler.close()


def test_a_blocked_flood_records_one_event_a_minute_with_its_count(spool_path: Path) -> None:
    """2,000 requests from a blocked IP wrote 2,000 events (and, under a size bound with the
    collector down, evicted the application's); now one event at the first, and the count of
    the rest when the spooler closes (or the minute is over)."""
    spooler = sqreen.configure(path=spool_path, heartbeat_delay=3600, ip_header="X-Forwarded-For")
    assert spooler.track("app.event")
    now = time.time()
    add_operator_action(
        spooler._store, read_action(block_ip("flood", "203.0.113.0/24"), now, "operator"), now
    )
    client = login_app().test_client()
    for _ in range(2000):
        assert client.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    assert client.get("/", headers={"X-Forwarded-For": "203.0.113.10"}).status_code == 403
    spooler.close()
    stopped = [e for e in stored_events(spool_path) if e["name"] == "sq.action.block_ip"]
    by_client: dict[str, int] = {}
    for event in stopped:
        ip = event["properties"]["output"]["ip_address"]
        by_client[ip] = by_client.get(ip, 0) + event["properties"]["requests"]
    assert by_client == {"203.0.113.9": 2000, "203.0.113.10": 1}
    assert len(stopped) == 3  # the first of each client at once, the 1,999 others at close


def test_the_listing_prints_stored_text_as_text(spool_path: Path, collector: Any) -> None:
    """A collector's user value "[/]" crashed the listing, "[link=...]" became a link, and a
    stored expiry of 1e300 overflowed."""
    from .test_cli import cli

    sqreen.configure(path=spool_path, url=collector.url, **FAST)
    push(
        collector,
        [
            user_action("block_user", "markup", {"name": "[/]"}),
            user_action("block_user", "link", {"name": "[link=https://evil.example/]x[/link]"}),
        ],
    )
    with sqlite3.connect(spool_path) as conn:
        conn.execute("UPDATE actions SET expires_at = 1e300 WHERE action_id = 'link'")
    conn.close()
    listed = cli(spool_path, "actions")
    assert listed.exit_code == 0, listed.output
    assert "[/]" in listed.output and "[link=https://evil.example/]" in listed.output
    assert "\x1b]8;" not in listed.output  # no terminal hyperlink


def test_the_operator_blocks_the_world_only_with_force(spool_path: Path) -> None:
    from .test_cli import cli

    for network in ("0.0.0.0/0", "::/0", "127.0.0.0/8", "10.0.0.0/7"):
        refused = cli(spool_path, "actions", "block-ip", network)
        assert refused.exit_code == 2 and (
            "wider than" in refused.output or "loopback" in refused.output
        )
    assert cli(spool_path, "actions", "block-ip", "10.0.0.0/8").exit_code == 0
    assert cli(spool_path, "actions", "block-ip", "0.0.0.0/0", "--force").exit_code == 0
