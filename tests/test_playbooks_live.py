"""Playbooks against real processes: a collector with an event store, Flask under a threaded
server tracking a custom event through a real spooler, two collectors sharing one store, a
restart in the middle of a window, a webhook receiver that fails then recovers, replay equal to
live, and the attacks the old playbook fell to."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import flask
import httpx
import orjson
import pytest

import sqreen
from sqreen.automation.playbooks import parse
from sqreen.cli.reference import Answer, Received, Receiver
from sqreen.collector.ingest import Ingest
from sqreen.collector.store import EventStore
from sqreen.storage.files import file_bytes
from sqreen.wire import MAX_ANSWER

from .test_actions import QuietHandler, ThreadingWSGIServer
from .test_cli_processes import SCRIPT, Collect, batch, run

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples" / "playbooks.toml"

COUPONS = """
allow_private = true
[[playbook]]
name = "coupons"
event = "coupon.invalid"
group_by = "user"
threshold = 3
within = "5m"
action = "block_user"
duration = "1h"
"""
BY_IP = """
[[playbook]]
name = "by ip"
event = "probe"
group_by = "ip"
threshold = {threshold}
within = "10m"
action = "block_ip"
duration = "1h"
"""


def now_event(
    name: str, ip: str = "198.51.100.7", offset: float = 0.0, **fields: Any
) -> dict[str, Any]:
    at = datetime.fromtimestamp(time.time() + offset, UTC).isoformat()
    return {"id": str(uuid.uuid4()), "name": name, "timestamp": at, "request": {"ip": ip}} | fields


def post(url: str, *events: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(url, content=orjson.dumps(batch(*events)), timeout=30)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "playbooks.toml"
    path.write_text(COUPONS)
    return path


def shop() -> flask.Flask:
    app = flask.Flask("checkout")

    @app.post("/checkout")
    def checkout() -> str:
        sqreen.identify({"email": flask.request.args["user"]})
        sqreen.track("coupon.invalid", {"properties": {"coupon": flask.request.args["coupon"]}})
        return "invalid coupon"

    @app.get("/account")
    def account() -> str:
        sqreen.identify({"email": flask.request.args["user"]})
        return "your account"

    return app


def test_a_custom_event_blocks_the_next_request_within_2_s_on_the_default_heartbeat(
    tmp_path: Path, spool_path: Path, book: Path
) -> None:
    collect = Collect(tmp_path / "received.jsonl", "--store", str(tmp_path / "s.db"),
                      "--playbooks", str(book))  # fmt: skip
    server = make_server("127.0.0.1", 0, sqreen.integrations.wsgi.SqreenMiddleware(shop()),
                         ThreadingWSGIServer, QuietHandler)  # fmt: skip
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sqreen.configure(path=spool_path, url=collect.url)  # the default 60 s heartbeat
        site = f"http://127.0.0.1:{server.server_address[1]}"
        with httpx.Client(base_url=site) as http:
            for coupon in ("A", "B", "C"):
                assert http.post(f"/checkout?user=mallory&coupon={coupon}").status_code == 200
                time.sleep(0.3)  # the first delivery (at once) brings the urgent names
            third = time.monotonic()
            while http.get("/account?user=mallory").status_code != 403:
                assert time.monotonic() - third < 2.0, "not blocked within 2 s"
                time.sleep(0.05)
            assert http.get("/account?user=bo").status_code == 200
    finally:
        server.shutdown()
        sqreen.default.current_spooler().close()
        collect.stop()


def test_two_collectors_on_one_store_keep_each_event_once_and_decide_once(
    tmp_path: Path,
) -> None:
    book = tmp_path / "p.toml"
    book.write_text(BY_IP.format(threshold=10))
    store = tmp_path / "shared.db"
    options = ("--store", str(store), "--playbooks", str(book))
    first = Collect(tmp_path / "a.jsonl", *options)
    second = Collect(tmp_path / "b.jsonl", *options)
    events = [now_event("probe") for _ in range(60)]
    try:
        # Every event goes to both collectors, from eight threads at once.
        jobs = [(url, e) for e in events for url in (first.url, second.url)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda job: post(*job), jobs))
    finally:
        first.stop()
        second.stop()
    assert sum(a["accepted"] for a in answers) == 60
    assert sum(a["duplicates"] for a in answers) == 60
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 60
        decisions = connection.execute("SELECT playbook, key FROM pb_decisions").fetchall()
    assert decisions == [("by ip", '{"ip":"198.51.100.7"}')]
    # The answers after the decision, whichever collector gave them, carry the block.
    assert [a["actions"][0]["parameters"] for a in answers[-4:]] == [
        {"ip_cidr": ["198.51.100.7"]}
    ] * 4


def test_workers_under_uvicorn_share_the_store(tmp_path: Path) -> None:
    book = tmp_path / "p.toml"
    book.write_text(BY_IP.format(threshold=5))
    store = tmp_path / "shared.db"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [SCRIPT, "collect", "--port", str(port), "--store", str(store), "--playbooks",
         str(book), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(url, now_event("probe")), range(20)))
        assert sum(a["accepted"] for a in answers) == 20
        assert post(url, now_event("probe"))["actions"][0]["action"] == "block_ip"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT count(*) FROM pb_decisions").fetchone()[0] == 1


def test_a_collector_killed_in_the_middle_of_a_window_goes_on_counting(tmp_path: Path) -> None:
    book = tmp_path / "p.toml"
    book.write_text(BY_IP.format(threshold=4))
    options = ("--store", str(tmp_path / "s.db"), "--playbooks", str(book))
    before = Collect(tmp_path / "r.jsonl", *options)
    assert post(before.url, now_event("probe"), now_event("probe"))["actions"] == []
    before.process.send_signal(signal.SIGKILL)
    before.process.wait(timeout=10)
    after = Collect(tmp_path / "r.jsonl", *options)
    try:
        assert post(after.url, now_event("probe"))["actions"] == []
        (action,) = post(after.url, now_event("probe"))["actions"]
        assert action["parameters"] == {"ip_cidr": ["198.51.100.7"]}
    finally:
        after.stop()


def test_replay_decides_what_live_decided(tmp_path: Path) -> None:
    text = EXAMPLES.read_text()
    book = tmp_path / "p.toml"
    book.write_text(text)
    store, out = tmp_path / "s.db", tmp_path / "r.jsonl"
    live = Collect(out, "--store", str(store), "--playbooks", str(book))
    try:
        # Failed logins from a few attackers against a few victims, each posted as it happens
        # (live, a block starts when decided: events it did not stop in time are counted).
        for i in range(120):
            user = {"email": f"victim{i % 7}@example.com"}
            post(
                live.url,
                now_event(
                    "sqreen.auth_track",
                    f"203.0.113.{i % 4}",
                    properties={"success": False},
                    user_identifiers=user,
                ),
            )
    finally:
        live.stop()
    with sqlite3.connect(store) as connection:
        decided = connection.execute("SELECT playbook, action, key, events FROM pb_decisions")
        lived = sorted((p, a, k, e) for p, a, k, e in decided)
    assert lived, "the example playbooks decided nothing"
    for source in (store, out):
        done = run("playbook", "replay", str(book), "--events", str(source), "--json")
        assert done.returncode == 0, done.stderr
        replayed = [orjson.loads(line) for line in done.stdout.splitlines()]
        assert sorted(_row(d) for d in replayed) == lived
        keys = {"playbook", "action", "key", "at", "events", "stopped"}
        assert all(set(d) >= keys for d in replayed)


def _row(decision: dict[str, Any]) -> tuple[str, str, str, str]:
    key = orjson.dumps(decision["key"], option=orjson.OPT_SORT_KEYS).decode()
    return decision["playbook"], decision["action"], key, orjson.dumps(decision["events"]).decode()


class Webhook:
    """A webhook receiver on 127.0.0.1 that fails its first ``failing`` requests."""

    def __init__(self, failing: int) -> None:
        self.failing, self.bodies = failing, list[Any]()
        self.receiver = Receiver(self.handle)
        self.receiver.start()

    def handle(self, received: Received) -> Answer:
        if self.failing > 0:
            self.failing -= 1
            return Answer(500)
        self.bodies.append(received.batch)
        return Answer(200, b"{}")


def test_notifications_are_retried_and_survive_a_restart(tmp_path: Path) -> None:
    hook = Webhook(failing=3)  # the three quick attempts of the first round fail
    text = COUPONS.replace('duration = "1h"', f'duration = "1h"\nnotify = ["{hook.receiver.url}"]')
    playbooks = parse(text)
    user = {"user_identifiers": {"email": "mallory"}}
    ingest = Ingest(EventStore(tmp_path / "s.db"), playbooks)
    try:
        ingest.take([now_event("coupon.invalid", **user) for _ in range(3)], MAX_ANSWER)
        deadline = time.monotonic() + 10
        while _queued(ingest)[0] == 0:  # failed once: rescheduled, not lost
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        ingest.close()  # the collector stops with the notification still queued
    assert hook.bodies == [] and hook.failing == 0
    again = Ingest(EventStore(tmp_path / "s.db"), playbooks)  # a restart
    try:
        with again.store.transaction() as connection:
            connection.execute("UPDATE notifications SET next_at = 0")  # due now, not in 10 s
        again.notifier.wake()
        deadline = time.monotonic() + 10
        while not hook.bodies:
            assert time.monotonic() < deadline, "not delivered after the restart"
            time.sleep(0.05)
    finally:
        again.close()
    (body,) = hook.bodies
    assert body["sqreen_payload_type"] == "security_response"
    assert body["properties"] == {"user_identifiers": [{"email": "mallory"}]}
    assert body["playbook"]["name"] == "coupons"
    hook.receiver.stop()


def _queued(ingest: Ingest) -> tuple[int, int]:
    with ingest.store.reading() as connection:
        row = connection.execute("SELECT count(*), max(attempts) FROM notifications").fetchone()
    return int(row[1] or 0), int(row[0])


def test_made_up_users_cannot_push_new_blocks_out_of_the_answer(
    tmp_path: Path, spool_path: Path
) -> None:
    book = tmp_path / "p.toml"
    book.write_text(COUPONS.replace("threshold = 3", "threshold = 1"))
    collect = Collect(tmp_path / "r.jsonl", "--store", str(tmp_path / "s.db"),
                      "--playbooks", str(book))  # fmt: skip
    try:
        padding = "x" * 150
        for start in range(0, 9000, 1000):
            events = [now_event("coupon.invalid", user_identifiers={"email": f"{n}{padding}"})
                      for n in range(start, start + 1000)]  # fmt: skip
            post(collect.url, *events)
        victim_block = now_event("coupon.invalid", user_identifiers={"email": "newest"})
        answer = httpx.post(collect.url, content=orjson.dumps(batch(victim_block)))
        assert len(answer.content) <= MAX_ANSWER
        found = answer.json()
        assert found["actions_omitted"] > 0
        assert found["actions"][0]["parameters"]["users"] == [{"email": "newest"}]
        # An application still reads the answer whole, and stores the newest block.
        spooler = sqreen.Spooler(path=spool_path, url=collect.url)
        assert spooler.track("heartbeat")
        deadline = time.monotonic() + 10  # delivered by flush() or by the delivery thread
        while spooler.flush().pending or not spooler.enforcer.current():
            assert time.monotonic() < deadline, "the answer was not taken in"
            time.sleep(0.05)
        assert spooler.enforcer.current().for_user({"email": "newest"}, time.time()) is not None
        assert spooler.health().failures == {}  # the answer was read whole
        spooler.close()
    finally:
        collect.stop()


def test_check_names_every_mistake_and_exits_2(tmp_path: Path) -> None:
    book = tmp_path / "bad.toml"
    book.write_text("""
critical_ips = ["10.0.0.0/8", "nope"]
allow_private = "yes"
colour = 1

[[playbook]]
name = "a"
event = "e"
where = { "properties.x" = { matches = "(" }, "request.nope" = 1, "foo" = 2, "ip" = { near = 1 } }
group_by = "user"
distinct = "properties."
threshold = 0
within = "forever"
action = "block_ip"
notify = ["ftp://example.com"]
repeat = 0
dry_run = "no"

[[playbook]]
name = "a"
event = "e"
threshold = 1
within = "1m"
action = "redirect_user"
group_by = "user"
duration = "1h"
reset_on = { where = {} }
""")
    done = run("playbook", "check", str(book))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    expected = [
        "critical_ips: 'nope' is not an address or CIDR range",
        "allow_private: must be true or false",
        "colour: unknown key",
        "playbook 'a': where.properties.x:",
        "playbook 'a': where.request.nope:",
        "playbook 'a': where.foo: 'foo' is not a dimension",
        "playbook 'a': where.ip: unknown operator 'near'",
        "playbook 'a': distinct:",
        "playbook 'a': threshold: an integer from 1",
        "playbook 'a': within: 'forever' is not a duration",
        "playbook 'a': notify:",
        "playbook 'a': repeat: a factor from 1 to 100",
        "playbook 'a': dry_run: true or false",
        "playbook 'a': group_by: block_ip needs 'ip'",
        "playbook 'a': duration: required for an action",
        "playbook 'a': reset_on: must be a table with an event",
        "playbook 'a': url: redirect_user needs a url",
    ]
    for start in expected:
        assert any(line.startswith(f"error: {start}") or start in line for line in lines), start
    assert all(line.startswith("error: ") for line in lines)
    good = run(
        "playbook", "check", str(Path(__file__).parent.parent / "examples" / "playbooks.toml")
    )
    assert good.returncode == 0 and len(good.stdout.splitlines()) == 4


def test_the_shipped_failed_login_playbook_never_locks_the_victim_out(tmp_path: Path) -> None:
    from sqreen.automation import state
    from sqreen.automation.engine import Engine
    from sqreen.automation.playbooks import load

    playbooks = load(EXAMPLES)
    connection = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    state.create(connection)
    victim = {"email": "victim@example.com"}
    attack = [now_event("sqreen.auth_track", "203.0.113.66", properties={"success": False},
                        user_identifiers=victim) for _ in range(10)]  # fmt: skip
    (decision,) = Engine(playbooks).process(connection, attack, time.time())
    assert decision.parameters == {"ip_cidr": ["203.0.113.66"]}  # the attacker's address only
    login = now_event("sqreen.auth_track", "198.51.100.20", properties={"success": True},
                      user_identifiers=victim)  # fmt: skip
    assert Engine(playbooks).process(connection, [login], time.time()) == []
    assert [row[1] for row in state.stopping(connection, time.time())] == ["203.0.113.66"]
    connection.close()


def test_the_store_stays_within_its_bounds_sampled_all_along(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    collect = Collect(tmp_path / "r.jsonl", "--store", str(store), "--store-max-size", "2MiB",
                      "--store-max-age", "1d")  # fmt: skip
    sizes = []
    try:
        old = now_event("probe") | {"timestamp": "2020-01-01T00:00:00+00:00"}
        post(collect.url, old)
        padding = "p" * 200
        for _ in range(40):  # about 9 MiB of events, in a burst
            post(
                collect.url, *[now_event("probe", properties={"pad": padding}) for _ in range(100)]
            )
            sizes.append(file_bytes(store))
        deadline = time.monotonic() + 20
        while file_bytes(store) > 2 << 20:
            assert time.monotonic() < deadline, f"still {file_bytes(store)} bytes"
            time.sleep(0.2)
    finally:
        collect.stop()
    assert max(sizes) <= 4 << 20, sizes  # between two prunes, a few batches over at most
    with sqlite3.connect(store) as connection:
        kept = connection.execute("SELECT count(*) FROM events").fetchone()[0]
        counters = dict(connection.execute("SELECT name, value FROM pb_counters"))
        oldest = connection.execute("SELECT min(at) FROM events").fetchone()[0]
    assert 0 < kept < 4001 and counters["pruned.size"] > 0 and counters["pruned.age"] == 1
    assert oldest > time.time() - 86400  # the 2020 event went by age
