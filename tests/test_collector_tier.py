"""The collector tier: ``sqreen-spool collect --forward nats://...`` under uvicorn, real
collectors in subprocesses in front of a real ``nats-server``, an application posting to them."""

from __future__ import annotations

import gzip
import itertools
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest

import sqreen
from sqreen.cli.reference import READ_DEADLINE
from sqreen.event import build
from sqreen.wire import encode_batch

from . import hostile
from .nats_servers import CLI, Collector, NatsServer, add_stream, events_in, stream_messages

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture
def server(nats_server: NatsServer) -> NatsServer:
    add_stream(nats_server.url)
    return nats_server


@pytest.fixture
def collectors(server: NatsServer) -> Iterator[list[Collector]]:
    started = [Collector(server.url), Collector(server.url, "--workers", "2")]
    yield started
    for collector in started:
        collector.stop()


class RoundRobin:
    """A tiny load balancer: each POST goes to the next collector, its answer comes back."""

    def __init__(self, targets: list[str]) -> None:
        turns = itertools.cycle(targets)
        self.counts: Counter[str] = Counter()
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                target = next(turns)
                balancer.counts[target] += 1
                forwarded = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.post(target, content=body, headers=forwarded, timeout=30)
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/events"


def test_two_collectors_forward_every_event_once(
    spool_path: Path, server: NatsServer, collectors: list[Collector]
) -> None:
    balancer = RoundRobin([c.url for c in collectors])
    try:
        tracking = sqreen.Spooler(path=spool_path)
        for i in range(2000):
            assert tracking.track("tier", {"properties": {"tag": str(i), "pad": "x" * (i % 50)}})
        tracking.close()
        spooler = sqreen.Spooler(path=spool_path, url=balancer.url, batch_size=100)
        result = spooler.flush(timeout=60)
        spooler.close()
    finally:
        balancer.server.shutdown()
    assert (result.delivered, result.pending) == (2000, 0)
    assert all(balancer.counts[c.url] >= 5 for c in collectors), balancer.counts
    messages = stream_messages(server.url)
    stored = Counter(e["properties"]["tag"] for e in events_in(messages))
    assert sorted(stored) == sorted(str(i) for i in range(2000))
    assert max(stored.values()) == 1


def batch_of(*events: sqreen.event.Event) -> bytes:
    return encode_batch("b-1", [e.payload for e in events], {})


def test_a_stream_that_is_down_is_a_503_with_retry_after(
    server: NatsServer, collectors: list[Collector]
) -> None:
    event = build("tier", {"properties": {"tag": "x"}})
    url = collectors[0].url
    assert httpx.post(url, content=batch_of(event)).json() == {"accepted": 1}
    server.stop()
    answer = httpx.post(url, content=batch_of(event), timeout=30)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert "the stream did not take the batch" in answer.json()["error"]
    server.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answer = httpx.post(url, content=batch_of(event), timeout=30)
        if answer.status_code == 200:
            break
        time.sleep(0.3)
    assert answer.status_code == 200, answer.text
    assert len(events_in(stream_messages(server.url))) == 1  # the same event, once


def test_gzip_bodies_refusals_and_the_size_limit(
    server: NatsServer, collectors: list[Collector]
) -> None:
    url = collectors[0].url
    good = build("tier", {"properties": {"tag": "good"}})
    bad = orjson.loads(build("tier", {"properties": {"tag": "bad"}}).payload)
    bad["name"] = ""
    body = encode_batch("b-2", [good.payload, orjson.dumps(bad)], {"age": 3})
    answer = httpx.post(url, content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 1
    assert [r["id"] for r in answer.json()["rejected"]] == [bad["id"]]
    messages = stream_messages(server.url)
    assert [orjson.loads(m) for _, m in messages] == [
        {"batch_id": "b-2", "dropped": {"age": 3}},
        orjson.loads(good.payload),
    ]
    assert messages[1][1] == good.payload  # byte for byte as stored
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.get(url).status_code == 405
    too_big = httpx.post(url, content=b"0" * (16 * 1024 * 1024 + 1), timeout=30)
    assert too_big.status_code == 413


def test_forwarding_takes_no_out_and_names_the_extra_it_needs(tmp_path: Path) -> None:
    refused = subprocess.run(
        [CLI, "collect", "--forward", "nats://127.0.0.1:1", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "takes no --out" in refused.stderr
    code = (
        "import sys; sys.modules['uvicorn'] = None; from sqreen.cli.app import main; "
        "sys.argv = ['sqreen-spool', 'collect', '--forward', 'nats://127.0.0.1:1']; main()"
    )
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert missing.returncode == 2
    assert "pip install 'sqreen-spool[collector]'" in missing.stderr


def test_the_tier_refuses_what_would_take_it_down(server: NatsServer, tmp_path: Path) -> None:
    """A token on every request, parsing bombs refused in bounded memory, slowloris cut."""
    tier = Collector(server.url, "--token", "tier-token")
    try:
        body = encode_batch("b-1", [build("tier", {"properties": {"tag": "t"}}).payload], {})
        assert httpx.post(tier.url, content=body).status_code == 401
        auth = {"Authorization": "Bearer tier-token"}
        assert httpx.post(tier.url, content=body, headers=auth).status_code == 200
        bomb = {**auth, "Content-Encoding": "gzip"}
        answer = httpx.post(tier.url, content=hostile.empty_objects(), headers=bomb, timeout=60)
        assert answer.status_code == 413
        with open(f"/proc/{tier.process.pid}/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
        assert peak < 200 * 1024, f"{peak // 1024} MiB"
        slow = hostile.slow_clients(tier.url, 300)
        assert hostile.cut_by_server(slow, READ_DEADLINE + 10) == len(slow)
        assert httpx.post(tier.url, content=body, headers=auth, timeout=10).status_code == 200
    finally:
        tier.stop()
