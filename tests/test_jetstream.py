"""The JetStream sink against real ``nats-server -js`` processes on loopback: every event once in
the stream, byte for byte as stored, through crashes, a missing stream, refusals, and servers
down or restarted."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sqreen
from sqreen.cli.app import app
from sqreen.storage.prune import prune

from .conftest import run_child
from .nats_servers import (
    SUBJECT,
    NatsServer,
    add_stream,
    events_in,
    free_port,
    stream_leader,
    stream_messages,
)

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture
def server(nats_server: NatsServer) -> NatsServer:
    return nats_server


def filled(path: Path, count: int, **settings: object) -> sqreen.Spooler:
    """A spooler to ``path`` holding ``count`` events tagged 0..count-1, nothing delivered: they
    are tracked by another, which has no URL, so that only this one's flushes deliver."""
    tracking = sqreen.Spooler(path=path)
    for i in range(count):
        assert tracking.track("nats.test", {"properties": {"tag": str(i)}})
    tracking.close()
    return sqreen.Spooler(path=path, **settings)  # type: ignore[arg-type]


def tags(url: str) -> Counter[str]:
    return Counter(e["properties"]["tag"] for e in events_in(stream_messages(url)))


def test_every_event_once_byte_identical_to_inspect(spool_path: Path, server: NatsServer) -> None:
    add_stream(server.url)
    spooler = filled(spool_path, 300, url=server.url, keep_delivered=3600)
    assert spooler.flush(timeout=30).delivered == 300
    spooler.close()
    messages = stream_messages(server.url)
    assert len(messages) == 300
    assert sorted(tags(server.url)) == sorted(str(i) for i in range(300))
    for headers, body in random.sample(messages, 5):
        event_id = headers["Nats-Msg-Id"]
        assert headers["Sqreen-Batch-Id"]
        shown = subprocess.run(
            [
                str(Path(sys.executable).parent / "sqreen-spool"),
                "inspect",
                "event",
                event_id,
                "--raw",
            ],
            env={**os.environ, "SQREEN_SPOOL_PATH": str(spool_path)},
            capture_output=True,
            check=True,
        ).stdout
        assert shown == body + b"\n"


def test_sigkill_in_the_middle_of_drains_stores_every_event_once(
    spool_path: Path, server: NatsServer
) -> None:
    """The application tracks and its delivery thread drains, SIGKILLed at ten random moments
    (between a PubAck and the settle, the event goes again: the stream drops it by its id)."""
    add_stream(server.url)
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    env = {**os.environ, "SQREEN_URL": server.url, "SQREEN_HEARTBEAT_DELAY": "0.1"}
    acknowledged: list[str] = []
    for _ in range(10):
        child = run_child("track_forever", str(spool_path), stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        first = child.stdout.readline()  # past start-up, however slow: then anywhere
        time.sleep(rng.uniform(0.1, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        output = first + child.stdout.read()
        acknowledged += [line.decode() for line in output.split(b"\n")[:-1]]
        child.wait()
    spooler = sqreen.Spooler(path=spool_path, url=server.url)
    assert spooler.flush(timeout=60).pending == 0
    spooler.close()
    stored = Counter(e["properties"]["tag"] for e in events_in(stream_messages(server.url)))
    assert len(acknowledged) > 200, "the children hardly tracked anything"
    assert set(acknowledged) <= set(stored), "an acknowledged event is not in the stream"
    assert max(stored.values()) == 1, "an event is in the stream twice"


def test_a_missing_stream_is_a_configuration_error_until_it_exists(
    spool_path: Path, server: NatsServer
) -> None:
    spooler = filled(spool_path, 20, url=server.url, retry_attempts=2)
    result = spooler.flush(timeout=10)
    assert (result.delivered, result.failed, result.pending) == (0, 20, 20)
    assert "collector_config" in spooler.health().failures
    # In NATS terms, not as an HTTP 404.
    assert "collector_config: NATS: no JetStream stream takes subject" in str(
        spooler.health().last_error
    )
    add_stream(server.url)
    assert spooler.flush(timeout=10).pending == 0
    spooler.close()
    assert len(tags(server.url)) == 20


def test_the_spooler_creates_the_stream_when_allowed(
    spool_path: Path, server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    spooler = filled(spool_path, 20, url=server.url, nats_create_stream=True)
    with caplog.at_level(logging.WARNING, logger="sqreen.spool"):
        assert spooler.flush(timeout=10).delivered == 20
        spooler.close()
    assert len(tags(server.url)) == 20
    created = [r for r in caplog.records if "created JetStream stream" in r.getMessage()]
    assert len(created) == 1  # said once, whichever thread made it


def test_a_message_over_the_streams_limit_rejects_that_event_only(
    spool_path: Path, server: NatsServer
) -> None:
    add_stream(server.url, max_msg_size=4096)
    big = {"properties": {"tag": "big", "pad": "x" * 8000}}
    assert sqreen.Spooler(path=spool_path).track("nats.test", big)
    spooler = filled(spool_path, 10, url=server.url)
    result = spooler.flush(timeout=10)
    assert (result.delivered, result.rejected, result.pending) == (10, 1, 0)
    spooler.close()
    assert sorted(tags(server.url)) == sorted(str(i) for i in range(10))


def test_the_server_down_at_start_then_up(spool_path: Path, tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    spooler = filled(spool_path, 50, url=server.url, retry_attempts=2, http_timeout=1)
    started = time.monotonic()
    result = spooler.flush(timeout=5)
    assert time.monotonic() - started < 6
    assert (result.delivered, result.pending) == (0, 50)
    assert "collector_unavailable" in spooler.health().failures
    server.start()
    try:
        add_stream(server.url)
        assert spooler.flush(timeout=15).delivered == 50
        spooler.close()
        assert len(tags(server.url)) == 50
    finally:
        server.stop()


def test_a_server_restarted_mid_drain_loses_and_duplicates_nothing(
    spool_path: Path, server: NatsServer
) -> None:
    add_stream(server.url)
    spooler = filled(spool_path, 6000, url=server.url, batch_size=200, http_timeout=1)
    results: list[sqreen.FlushResult] = []
    drain = threading.Thread(target=lambda: results.append(spooler.flush(timeout=60)))
    drain.start()
    time.sleep(0.15)
    server.stop(signal.SIGKILL)
    server.start()
    drain.join()
    deadline = time.monotonic() + 60
    while spooler.flush(timeout=10).pending and time.monotonic() < deadline:
        time.sleep(0.2)
    spooler.close()
    stored = tags(server.url)
    assert sorted(stored) == sorted(str(i) for i in range(6000)), "an event is missing"
    assert max(stored.values()) == 1, "an event is in the stream twice"


def test_the_exit_flush_with_the_server_down_is_bounded(spool_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    child = run_child("track_and_exit", str(spool_path), url, "20", "1.5")
    assert child.wait(30) == 0
    # Start-up (imports) included: the exit flush itself gave up after its 1.5 s.
    assert time.monotonic() - started < 1.5 + 4
    assert sqreen.Spooler(path=spool_path).flush().pending == 20


def test_nats_py_is_imported_only_for_a_nats_url(spool_path: Path) -> None:
    code = f"""
import sys, sqreen
spooler = sqreen.Spooler(path={str(spool_path)!r}, url="http://127.0.0.1:9/")
spooler.track("e")
assert "nats" not in sys.modules, "an http:// spooler imported nats-py"
sys.modules["nats"] = None  # as if the extra were not installed
try:
    sqreen.Spooler(path={str(spool_path)!r}, url="nats://127.0.0.1:4222")
except sqreen.ConfigError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, text=True
    ).stdout
    assert "pip install 'sqreen-spool[nats]'" in out


def test_subject_and_servers_are_settings(spool_path: Path) -> None:
    settings = sqreen.Spooler(
        path=spool_path, url=" nats://127.0.0.1:1, tls://127.0.0.1:2 ", nats_subject="app.ev"
    ).settings
    assert settings.url == "nats://127.0.0.1:1,tls://127.0.0.1:2"
    assert settings.nats_subject == "app.ev"
    with pytest.raises(sqreen.ConfigError):
        sqreen.Spooler(path=spool_path, nats_subject="app.*")
    assert sqreen.Spooler(path=spool_path).settings.nats_subject == SUBJECT


def test_sigkill_of_the_streams_leader_in_a_three_server_cluster(
    spool_path: Path, tmp_path: Path
) -> None:
    """A stream replicated three times: its leader SIGKILLed during a drain. The drain goes on
    after the election, and the stream holds every event once."""
    routes = [free_port() for _ in range(3)]
    cluster = [
        NatsServer(tmp_path, f"n{i}", routes[i], tuple(p for p in routes if p != routes[i]))
        for i in range(3)
    ]
    for member in cluster:
        member.start()
    url = ",".join(member.url for member in cluster)
    try:
        deadline = time.monotonic() + 30
        while True:  # the cluster elects its meta leader first
            try:
                add_stream(cluster[0].url, replicas=3)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        spooler = filled(spool_path, 8000, url=url, batch_size=200, http_timeout=2)
        drain = threading.Thread(target=spooler.flush, kwargs={"timeout": 60})
        drain.start()
        time.sleep(0.3)
        leader = stream_leader(cluster[0].url)
        killed = next(member for member in cluster if member.name == leader)
        killed.stop(signal.SIGKILL)
        drain.join()
        deadline = time.monotonic() + 90
        while spooler.flush(timeout=15).pending and time.monotonic() < deadline:
            time.sleep(0.5)
        assert spooler.flush(timeout=5).pending == 0, spooler.health().last_error
        spooler.close()
        survivor = next(member for member in cluster if member is not killed)
        stored = tags(survivor.url)
        assert sorted(stored) == sorted(str(i) for i in range(8000)), "an event is missing"
        assert max(stored.values()) == 1, "an event is in the stream twice"
        assert stream_leader(survivor.url) != leader
    finally:
        for member in cluster:
            member.stop(signal.SIGKILL)


def drained(spooler: sqreen.Spooler, seconds: float = 20) -> bool:
    """Flush until nothing is pending (the delivery thread may hold a batch meanwhile)."""
    deadline = time.monotonic() + seconds
    while spooler.flush(timeout=5).pending:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_forked_child_delivers_on_its_own_connection(
    spool_path: Path, server: NatsServer
) -> None:
    add_stream(server.url)
    spooler = filled(spool_path, 10, url=server.url)
    assert spooler.flush(timeout=10).delivered == 10  # the parent's loop and connection are up
    pid = os.fork()
    if pid == 0:  # the child: its own loop and connection, none of its parent's
        code = 3
        try:
            if spooler.track("nats.test", {"properties": {"tag": "child"}}) and drained(spooler):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert spooler.track("nats.test", {"properties": {"tag": "parent"}})
    assert drained(spooler)
    spooler.close()
    assert sorted(tags(server.url)) == sorted([*map(str, range(10)), "child", "parent"])


def test_the_cli_flushes_into_the_stream(spool_path: Path, server: NatsServer) -> None:
    add_stream(server.url)
    filled(spool_path, 30).close()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sqreen-spool"), "--url", server.url, "flush"],
        env={**os.environ, "SQREEN_SPOOL_PATH": str(spool_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "delivered 30, rejected 0, still pending 0" in done.stdout
    assert len(tags(server.url)) == 30


def test_a_stream_without_the_drop_subject_still_takes_the_events(
    spool_path: Path, server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`nats stream add --subjects sqreen.events`: the drop report has no responders. It is a
    configuration error, said once; the events are delivered (they were held back for good)."""
    add_stream(server.url, subjects=(SUBJECT,))
    aging = sqreen.Spooler(path=spool_path, max_age=0.2)
    for i in range(3):
        assert aging.track("old", {"properties": {"tag": f"old-{i}"}})
    time.sleep(0.5)
    assert prune(aging._store, aging.settings)["age"] == 3  # the next batch reports it
    aging.close()
    spooler = filled(spool_path, 5, url=server.url)
    result = spooler.flush(timeout=20)
    spooler.close()
    assert (result.delivered, result.pending) == (5, 0)
    assert sorted(tags(server.url)) == sorted(str(i) for i in range(5))
    said = [r.getMessage() for r in caplog.records if f"{SUBJECT}.dropped" in r.getMessage()]
    assert len(said) == 1, said


class PlaintextNats:
    """A plaintext server on loopback that speaks first as NATS does (INFO, asking for no
    TLS) and keeps every byte a client sends it."""

    INFO = (
        b'INFO {"server_id":"plain","version":"2.10.0","auth_required":true,'
        b'"tls_required":false,"max_payload":1048576,"headers":true}\r\n'
    )

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(self.INFO)
                conn.settimeout(0.5)
                try:
                    while data := conn.recv(65536):
                        self.received += data
                except OSError:
                    pass


def test_tls_means_tls_or_no_connection(spool_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """nats-py upgrades only when the server asks: a plaintext server at a tls:// URL got the
    CONNECT with the token in clear. Now nothing is sent to it, and the token is never shown."""
    plain = PlaintextNats()
    url = f"tls://S3CRET-TOKEN@127.0.0.1:{plain.port}"
    spooler = sqreen.Spooler(path=spool_path, url=url, http_timeout=3, heartbeat_delay=3600)
    assert spooler.track("e")
    result = spooler.flush(timeout=10)
    assert (result.delivered, result.pending) == (0, 1)
    deadline = time.monotonic() + 20  # this flush, or the delivery thread's first, connects
    while plain.connections < 1 and time.monotonic() < deadline:
        spooler.flush(timeout=5)
    assert plain.connections >= 1
    time.sleep(0.6)  # what a client sends after the INFO has arrived
    assert b"CONNECT" not in plain.received and b"S3CRET" not in plain.received
    assert "S3CRET" not in repr(spooler.settings)
    assert "S3CRET" not in str(spooler.health())
    spooler.close()
    plain.sock.close()
    shown = CliRunner().invoke(app, ["--path", str(spool_path), "--url", url, "inspect"])
    assert "S3CRET" not in shown.output
    assert not any("S3CRET" in record.getMessage() for record in caplog.records)


def test_tail_reads_the_last_events_back_from_the_stream(
    spool_path: Path, server: NatsServer
) -> None:
    import orjson

    from .test_cli_processes import run as command

    add_stream(server.url)
    spooler = filled(spool_path, 8, url=server.url)
    assert spooler.flush(timeout=10).pending == 0
    spooler.close()
    done = command("--url", server.url, "tail", "-n", "3", "--json")
    assert done.returncode == 0, done.stderr
    read = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [e["properties"]["tag"] for e in read] == ["5", "6", "7"]
    people = command("tail", "--url", server.url)  # a global option after the command's name
    assert people.returncode == 0 and len(people.stdout.splitlines()) == 8
    assert "8 events from stream" in people.stderr
