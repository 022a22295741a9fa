"""The Event Explorer in a real browser (Debian's chromium, driven by Playwright) over a store
that real spoolers filled through a real collector: each view, a breakdown and a filter, one
event, removing a decision, replaying a draft, the spool side, hostile text, the token and the
CSRF token. Screenshots of each view go to the test's output folder (and to ``docs/images``
when EXPLORER_SCREENSHOTS names it)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright import sync_api as playwright

import sqreen

from .test_cli_processes import SCRIPT

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
BOOK = """
allow_private = true
[[playbook]]
name = "logins"
event = "sqreen.auth_track"
where = { "properties.success" = false }
group_by = "user"
threshold = 5
within = "10m"
action = "block_user"
duration = "1h"
"""
HOSTILE_NAME = "evil\x1b[2J<b>bold</b>"
HOSTILE_HTML = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A ``sqreen-spool`` command serving on 127.0.0.1:``port``."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [SCRIPT, *args, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "ui/static/explorer.css")
                return
            except httpx.TransportError:
                assert self.process.poll() is None, self.process.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    """A collector with a store and the explorer, filled by two real spoolers."""
    directory = tmp_path_factory.mktemp("explorer")
    book = directory / "playbooks.toml"
    book.write_text(BOOK)
    store = directory / "events.db"
    server = Server("collect", "--store", str(store), "--playbooks", str(book), "--ui")
    spools = []
    for n in range(2):
        spool = directory / f"spool{n}.db"
        spooler = sqreen.Spooler(path=spool, url=server.url)
        for i in range(150):  # spread over the last day
            at = datetime.now(UTC) - timedelta(seconds=(150 - i) * 500 + n * 37)
            options = {"properties": {"plan": ["free", "pro"][i % 2], "total": i},
                       "user_identifiers": {"email": f"user{i % 9}@example.com"},
                       "timestamp": at}  # fmt: skip
            assert spooler.track(["page.view", "cart.add", "order.paid"][i % 3], options)
        for _ in range(6):
            assert spooler.auth_track(False, email="mallory@example.com")
        assert spooler.track(
            HOSTILE_NAME, {"properties": {"html": HOSTILE_HTML, "big": "x" * 60000}}
        )
        deadline = time.monotonic() + 20  # flush(), or the delivery thread that leased a batch
        while spooler.flush().pending:
            assert time.monotonic() < deadline, "not delivered"
            time.sleep(0.05)
        spooler.close()
        spools.append(spool)
    # An event the spool could not deliver, for its side of the explorer.
    stuck = sqreen.Spooler(path=spools[0], url="http://127.0.0.1:9/", retry_attempts=1)
    assert stuck.track("stuck.event")
    stuck.flush(timeout=2)
    stuck.close()
    yield server, store, spools[0]
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("make test installs Debian's chromium: run it through make")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def shot(page: Any, out: Path, name: str, selector: str) -> None:
    path = out / f"explorer-{name}.png"
    page.locator(selector).screenshot(path=str(path))
    assert path.stat().st_size > 5_000
    wanted = os.environ.get("EXPLORER_SCREENSHOTS")
    if wanted:
        shutil.copy(path, Path(wanted) / path.name)


def opened(browser: Any, url: str, dialogs: list[str]) -> Any:
    # Playwright's waits evaluate strings, which the page's CSP forbids (as it should): the
    # test's own context lifts it. What is asserted is the page's rendering, not the CSP
    # (test_a_token_beyond_loopback_and_a_csrf_token_on_posts checks the header).
    page = browser.new_page(viewport={"width": 1300, "height": 900}, bypass_csp=True)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return page


def test_each_view_and_a_breakdown_a_filter_and_an_event(
    filled: tuple[Server, Path, Path], browser: Any, tmp_path: Path
) -> None:
    server, _, _ = filled
    dialogs: list[str] = []
    page = opened(browser, server.url + "ui/", dialogs)
    assert page.locator("#trend-chart canvas").count() >= 1
    names = orjson.loads(page.locator("#trend-chart").get_attribute("data-series"))
    assert {"page.view", "cart.add", "order.paid", "sqreen.auth_track"} <= set(names)
    assert page.locator("#names li[data-name='page.view']").inner_text() == "page.view (100)"
    shot(page, tmp_path, "trend", "#trend")

    page.locator("#names li[data-name='page.view']").click()  # focus on one name
    page.wait_for_selector("#names li.focused")
    page.select_option("#dimension", "properties.plan")
    page.wait_for_selector("#values tr[data-value='pro']")
    assert page.locator("#values tr[data-value='pro'] td").nth(1).inner_text() == "50"
    assert page.locator("#values tr .spark canvas").count() >= 2  # a small trend each
    shot(page, tmp_path, "breakdown", "#breakdown")
    page.locator("#values tr[data-value='pro']").click()
    page.wait_for_selector("#chips .chip >> text=properties.plan:pro")
    assert "f=properties.plan%3Apro" in page.url and "name=page.view" in page.url
    page.wait_for_function("document.getElementById('events-total').textContent === '50 matching'")

    page.locator("#event-rows tr").first.click()
    page.wait_for_selector("#event-detail:not([hidden])")
    event_id = page.locator("#event-id").inner_text()
    detail = orjson.loads(page.locator("#event-json").inner_text())
    assert detail["id"] == event_id and detail["properties"]["plan"] == "pro"
    shot(page, tmp_path, "event", "#event-detail")

    again = opened(browser, page.url, dialogs)  # the URL holds the whole view
    again.wait_for_selector("#chips .chip >> text=properties.plan:pro")
    again.locator("#chips .chip >> text=properties.plan:pro").locator("button").click()
    again.wait_for_function("document.querySelectorAll('#chips .chip').length === 1")
    assert dialogs == []


def test_hostile_text_renders_as_text(filled: tuple[Server, Path, Path], browser: Any) -> None:
    server, _, _ = filled
    dialogs: list[str] = []
    page = opened(browser, server.url + "ui/?range=86400", dialogs)
    row = page.locator("#event-rows tr").filter(has_text="evil")
    cells = row.first.locator("td")
    assert cells.nth(1).inner_text() == "evil\\x1b[2J<b>bold</b>"
    assert row.first.locator("b, script, img").count() == 0
    assert len(cells.nth(4).inner_text()) < 400  # the 60 KiB value, cut in the list
    row.first.click()
    page.wait_for_selector("#event-detail:not([hidden])")
    assert HOSTILE_HTML in page.locator("#event-json").inner_text()
    assert page.locator("#event-detail script, #event-detail img").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []  # no alert() ran


def test_remove_a_decision_and_replay_a_draft(
    filled: tuple[Server, Path, Path], browser: Any, tmp_path: Path
) -> None:
    server, store, _ = filled
    dialogs: list[str] = []
    page = opened(browser, server.url + "ui/", dialogs)
    page.wait_for_selector("#decision-rows tr")
    row = page.locator("#decision-rows tr").first
    assert "logins" in row.inner_text() and "mallory@example.com" in row.inner_text()
    shot(page, tmp_path, "decisions", "#decisions")
    row.locator("button").click()  # confirm() is accepted
    page.wait_for_function("document.querySelectorAll('#decision-rows tr').length === 0")
    assert dialogs and dialogs[0].startswith("Remove block_user of logins")
    answer = httpx.post(server.url, content=orjson.dumps({
        "batch_id": "b", "sent_at": "2026-01-01T00:00:00+00:00", "events": []}))  # fmt: skip
    assert answer.json()["actions"] == []  # the applications lift the block
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT count(*) FROM pb_decisions").fetchone()[0] == 1

    draft = BOOK.replace("threshold = 5", "threshold = 2")
    page.fill("#draft", draft)
    page.click("#replay")
    page.wait_for_function("document.getElementById('replay-summary').textContent.includes('keys')")
    summary = page.locator("#replay-summary").inner_text()
    # Mallory's 12 failed logins: the second decides, the block stops the other 10.
    assert summary == "1 decisions on 1 keys; their blocks would have stopped 10 events"
    page.wait_for_function(
        "document.getElementById('trend-chart').textContent.includes('draft would fire')"
    )
    shot(page, tmp_path, "replay", "#trend")
    page.fill("#draft", "[[playbook]]\nname = 'x'\nthreshold = 0\n")
    page.click("#replay")
    page.wait_for_selector("#replay-problems li")
    assert "threshold" in page.locator("#replay-problems").inner_text()


def test_the_spool_side_read_only(
    filled: tuple[Server, Path, Path], browser: Any, tmp_path: Path
) -> None:
    _, _, spool = filled
    before = spool.read_bytes()
    server = Server("explore", str(spool))
    try:
        dialogs: list[str] = []
        page = opened(browser, server.url + "ui/", dialogs)
        page.wait_for_selector("#spool:not([hidden])")
        summary = page.locator("#spool-summary").inner_text()
        assert "pending\n1" in summary
        assert "stuck.event" in page.locator("#spool-pending").inner_text()
        shot(page, tmp_path, "spool", "#spool")
    finally:
        server.stop()
    assert spool.read_bytes() == before


def test_a_token_beyond_loopback_and_a_csrf_token_on_posts(
    filled: tuple[Server, Path, Path], tmp_path: Path
) -> None:
    _, store, _ = filled
    refused = subprocess.run([SCRIPT, "explore", str(store), "--host", "0.0.0.0"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert refused.returncode == 2 and "--ui-token" in refused.stderr
    server = Server("explore", str(store), "--ui-token", "s3cret")
    try:
        assert httpx.get(server.url + "ui/").status_code == 401
        assert httpx.get(server.url + "ui/api/trend").status_code == 401
        with httpx.Client(base_url=server.url) as client:
            login = client.get("ui/?token=s3cret")
            assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
            page = client.get("ui/")
            assert page.status_code == 200
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert client.post("ui/api/remove", json={"id": "x"}).status_code == 403
            csrf = page.text.split('name="csrf" content="')[1].split('"')[0]
            removed = client.post("ui/api/remove", json={"id": "x"}, headers={"X-CSRF-Token": csrf})
            assert removed.status_code == 404  # authorised; no such decision
            assert client.get("ui/static/..%2F..%2Fapp.py").status_code == 404
    finally:
        server.stop()


def test_explore_loads_json_lines_and_refuses_other_files(tmp_path: Path) -> None:
    lines = tmp_path / "received.jsonl"
    now = datetime.now(UTC)
    events = [
        {"id": f"00000000-0000-4000-8000-{i:012d}", "name": "coupon.invalid",
         "timestamp": (now - timedelta(minutes=i)).isoformat(), "request": {"ip": "203.0.113.5"}}
        for i in range(30)
    ]  # fmt: skip
    lines.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    server = Server("explore", str(lines))
    try:
        found = httpx.get(server.url + "ui/api/breakdown", params={"dimension": "ip"}).json()
        top = found["values"][0]
        assert (top["value"], top["count"], sum(top["trend"])) == ("203.0.113.5", 30, 30)
    finally:
        server.stop()
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE mine (x)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    for path, why in ((foreign, "neither an event store nor a spool"), (bad, "line 1")):
        done = subprocess.run([SCRIPT, "explore", str(path)], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        assert done.returncode == 2 and why in done.stderr, done.stderr
