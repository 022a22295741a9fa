"""The installed ``sqreen-spool`` script in real subprocesses: collect, flush, import, inspect."""

from __future__ import annotations

import contextlib
import gzip
import os
import pty
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

import sqreen
from sqreen.cli.app import app
from sqreen.cli.reference import READ_DEADLINE
from sqreen.storage.files import size_of

from . import collector as c
from . import hostile
from .conftest import rows, run_child

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).with_name("sqreen-spool"))
# Runs a command and prints its peak RSS (KiB) on stderr.
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)"
)


def run(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def fill(spool: Path, n: int, name: str = "e") -> None:
    """``n`` events in the spool, quickly (one import transaction per 2000)."""
    lines = b"".join(
        b'{"name": "%s", "properties": {"i": %d}}\n' % (name.encode(), i) for i in range(n)
    )
    done = run("--path", str(spool), "import", "-", input=lines.decode())
    assert done.returncode == 0, done.stderr


class Collect:
    """``sqreen-spool collect`` running in a subprocess."""

    def __init__(self, out: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [SCRIPT, "collect", "--port", "0", "--out", str(out), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        assert first.startswith("listening on http://127.0.0.1:"), first
        self.url = first.split()[-1]
        # Read what it prints as it prints it: a full pipe would stall the collector.
        self.printed: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.printed.extend(line.rstrip("\n") for line in self.process.stdout)

    def stop(self) -> tuple[int, list[str]]:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        return code, self.printed


@pytest.fixture
def collect(tmp_path: Path) -> Iterator[Collect]:
    server = Collect(tmp_path / "received.jsonl")
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def batch(*events: dict[str, Any], **extra: Any) -> dict[str, Any]:
    sent_at = datetime.now(UTC).isoformat()
    return {"batch_id": str(uuid.uuid4()), "sent_at": sent_at, "events": list(events), **extra}


def event(**fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "name": "e", "timestamp": "2018-03-15T14:42:00+00:00"} | fields


def test_collect_receives_what_a_spooler_delivers(
    spool_path: Path, tmp_path: Path, collect: Collect
) -> None:
    spooler = sqreen.Spooler(path=spool_path, url=collect.url)
    for i in range(1500):
        assert spooler.track("signup", {"properties": {"i": i}, "user_identifiers": {"u": str(i)}})
    spooler.flush()  # with what the background thread already sent: everything
    spooler.close()
    assert rows(spool_path) == []
    code, printed = collect.stop()
    assert code == 0
    received = [
        orjson.loads(line) for line in (tmp_path / "received.jsonl").read_bytes().splitlines()
    ]
    assert [e["properties"]["i"] for e in received] == list(range(1500))
    assert received[7]["user_identifiers"] == {"u": "7"}
    assert sum(" signup " in line for line in printed) == 1500
    assert printed[-1].startswith("received 1500 events in ")
    assert printed[-1].endswith(" batches (0 duplicates, 0 rejected)")


def test_collect_checks_the_wire_format(tmp_path: Path, collect: Collect) -> None:
    good, bad = event(), event(properties={"x": 1}, user_identifiers={"id": 5.5})

    def post(body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(collect.url + "any/path", content=body, headers=headers)

    answer = post(orjson.dumps(batch(good, bad)))
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 1
    assert answer.json()["rejected"] == [
        {
            "id": bad["id"],
            "reason": "user_identifiers must map str to str or int; 'id': 5.5 is str to float",
        }
    ]
    again = post(gzip.compress(orjson.dumps(batch(good))), **{"Content-Encoding": "gzip"})
    assert again.json() == {"accepted": 0, "duplicates": 1}
    for body, headers, reason in [
        (b"{nope", {}, "unexpected character"),
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, "not valid gzip"),
        (orjson.dumps([1]), {}, "must be a JSON object"),
        (orjson.dumps({"sent_at": "2018-01-01", "events": []}), {}, "'batch_id' must be"),
        (orjson.dumps(batch(good, dropped={"lost": 3})), {}, "'dropped' must map"),
        (orjson.dumps(batch({"name": "no id"})), {}, "events[0] has no string 'id'"),
    ]:
        refused = post(body, **headers)
        assert refused.status_code == 400, body
        assert reason in refused.json()["error"]
    _, printed = collect.stop()
    assert printed[-1] == "received 1 events in 2 batches (1 duplicates, 1 rejected)"


def test_collect_remembers_ids_across_restarts(tmp_path: Path, collect: Collect) -> None:
    first = event()
    assert httpx.post(collect.url, content=orjson.dumps(batch(first))).json()["accepted"] == 1
    collect.stop()
    second = Collect(tmp_path / "received.jsonl")
    answer = httpx.post(second.url, content=orjson.dumps(batch(first, event())))
    assert answer.json() == {"accepted": 1, "duplicates": 1}
    second.stop()
    assert len((tmp_path / "received.jsonl").read_bytes().splitlines()) == 2


def test_collect_on_a_busy_port_fails_with_one_line(collector: Any) -> None:
    busy = run("collect", "--port", str(collector.port), timeout=20)
    assert busy.returncode == 1
    assert (
        busy.stderr.strip()
        == f"error: cannot listen on 127.0.0.1:{collector.port}: Address already in use"
    )


def test_flush_script_drains_the_spool(spool_path: Path, collector: Any) -> None:
    fill(spool_path, 3000)
    done = run("--path", str(spool_path), "--url", collector.url, "flush")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        "delivered 1000 of 3000 pending",
        "delivered 2000 of 3000 pending",
        "delivered 3000 of 3000 pending",
    ]
    assert len(collector.accepted_events()) == 3000
    assert rows(spool_path) == []


def test_flush_on_a_terminal_shows_a_progress_bar(spool_path: Path, collector: Any) -> None:
    fill(spool_path, 2500)
    controller, terminal = pty.openpty()  # a real terminal for the command's stdout
    process = subprocess.Popen(
        [SCRIPT, "--path", str(spool_path), "--url", collector.url, "flush"],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(terminal)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the command has exited
        while chunk := os.read(controller, 4096):
            shown += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    screen = shown.decode(errors="replace")
    assert "delivering" in screen and "2500/2500" in screen
    assert "delivered 1000 of" not in screen  # the bar, not the plain lines
    assert "delivered 2500, rejected 0, still pending 0" in screen


def test_flush_racing_a_running_flusher_sends_no_event_twice(
    spool_path: Path, collector: Any
) -> None:
    fill(spool_path, 20_000)

    def slowly(batch: dict[str, Any]) -> c.Answer:  # long enough for the flushers to overlap
        answer = c.accept()(batch)
        answer.delay = 0.003
        return answer

    collector.default = slowly
    app = run_child("flush_forever", str(spool_path), collector.url)
    try:
        operators = [
            subprocess.Popen(
                [
                    SCRIPT,
                    "--path",
                    str(spool_path),
                    "--url",
                    collector.url,
                    "flush",
                    "--batch-size",
                    "300",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        for operator in operators:
            assert operator.wait(timeout=120) in (0, 1)  # 1: rows still leased by the app
        deadline = 60.0
        while rows(spool_path, "status = 0") and deadline > 0:
            subprocess.run(["sleep", "0.2"], check=True)
            deadline -= 0.2
    finally:
        app.kill()
        app.wait()
    sent = Counter(e["id"] for e in collector.received_events())
    assert len(sent) == 20_000
    assert max(sent.values()) == 1
    sizes = Counter(len(r.batch["events"]) for r in collector.requests)
    assert sizes[200] > 5 and sizes[300] > 5  # both the app's flusher and the operator's ran


def test_import_of_100000_lines(spool_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "past.jsonl"
    with source.open("wb") as out:
        for i in range(100_000):
            out.write(
                b'{"name": "order", "properties": {"n": %d, "total": 12.5}, '
                b'"user_identifiers": {"email": "u%d@example.com"}, "timestamp": %d}\n'
                % (i, i % 97, 1_500_000_000 + i)
            )
    command = [SCRIPT, "--path", str(spool_path), "import", str(source)]
    importing = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    largest_wal = 0  # sampled all along: the last close checkpoints and removes the WAL
    while importing.poll() is None:
        largest_wal = max(largest_wal, size_of(f"{spool_path}-wal"))
        time.sleep(0.01)
    out, err = importing.communicate()
    assert importing.returncode == 0, err
    assert out.startswith(f"imported 100000 events into {spool_path}")
    assert 0 < largest_wal < 8 * 1024 * 1024  # checkpointed as it went
    stored = rows(spool_path)
    assert len(stored) == 100_000
    last = orjson.loads(stored[-1]["payload"])
    assert last["properties"] == {"n": 99_999, "total": 12.5}
    assert last["timestamp"] == datetime.fromtimestamp(1_500_099_999, UTC).isoformat()


def test_import_of_garbage_is_one_line_per_problem(spool_path: Path) -> None:
    done = run("--path", str(spool_path), "import", "-", input="\x00\x01\x02\n{\n")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    first, second, *_ = done.stderr.splitlines()
    assert first.startswith("line 1: not valid JSON: unexpected character")
    assert second.startswith("line 2: not valid JSON: unexpected end of data")


def test_inspect_events_streams(spool_path: Path, tmp_path: Path) -> None:
    """Listing ten times more events must not take (much) more memory."""

    def peak_kib(n: int) -> int:
        path = tmp_path / f"{n}.db"
        fill(path, n)
        # Started from a small wrapper: a child's peak RSS starts at its parent's (vfork), and
        # this test process grows with what it reads.
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PEAK,
                SCRIPT,
                "--path",
                str(path),
                "inspect",
                "events",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        lines = sum(1 for _ in process.stdout)
        peak = int(process.stderr.read())
        assert (lines, process.wait()) == (n, 0)
        return peak

    small, large = peak_kib(3000), peak_kib(60_000)
    assert large - small < 4 * 1024, (small, large)  # 60,000 decoded events would be ~40 MiB


def test_collect_bounds_what_a_body_may_cost(collect: Collect) -> None:
    bomb = gzip.compress(b"\0" * (1024 * 1024 * 1024), 9)  # 1 MiB on the wire, 1 GiB inflated
    answer = httpx.post(collect.url, content=bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    host, port = httpx.URL(collect.url).host, httpx.URL(collect.url).port
    with socket.create_connection((host, port), timeout=10) as conn:  # a length httpx won't send
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nx")
        assert conn.recv(100).startswith(b"HTTP/1.1 413 ")
    overflow = batch(event())
    overflow["sent_at"] = "0001-01-01T00:00:00+01:00"
    refused = httpx.post(collect.url, content=orjson.dumps(overflow))
    assert refused.status_code == 400 and "out of range" in refused.json()["error"]
    with open(f"/proc/{collect.process.pid}/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    assert peak < 300 * 1024, f"{peak // 1024} MiB"  # 2.1 GB before
    code, _ = collect.stop()
    assert code == 0


def test_collect_says_in_one_line_what_is_wrong_with_out(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = runner.invoke(app, ["collect", "--port", "0", "--out", str(tmp_path)])
    assert directory.exit_code == 2
    assert "Is a directory" in directory.stderr and "Traceback" not in directory.output
    garbage = tmp_path / "received.jsonl"
    garbage.write_bytes(b'{"id": "a"}\nnot json\n')
    broken = runner.invoke(app, ["collect", "--port", "0", "--out", str(garbage)])
    assert broken.exit_code == 1
    assert "line 2 is not an event" in broken.stderr


def peak_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) // 1024


def test_collect_bounds_what_parsing_may_cost(collect: Collect) -> None:
    """16 KiB of gzip that inflate to 16 MiB of "{}," cost 559 MiB in one request, about 1 GB
    with four at once; a batch of 10,001 events is refused too."""
    bomb = hostile.empty_objects()
    assert len(bomb) < 64 * 1024

    def post() -> int:
        headers = {"Content-Encoding": "gzip"}
        return httpx.post(collect.url, content=bomb, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: post(), range(4))) == [413] * 4
    many = batch(*(event() for _ in range(10_001)))
    assert httpx.post(collect.url, content=orjson.dumps(many), timeout=60).status_code == 413
    assert peak_mib(collect.process.pid) < 200
    assert httpx.post(collect.url, content=orjson.dumps(batch(event()))).status_code == 200


def test_collect_outlasts_slowloris(collect: Collect) -> None:
    slow = hostile.slow_clients(collect.url, 300)
    assert hostile.cut_by_server(slow, READ_DEADLINE + 10) == len(slow)
    answer = httpx.post(collect.url, content=orjson.dumps(batch(event())), timeout=10)
    assert answer.status_code == 200


def test_collect_takes_a_token_and_needs_one_beyond_loopback(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-collector\n")
    server = Collect(tmp_path / "received.jsonl", "--token-file", str(token_file))
    try:
        body = orjson.dumps(batch(event()))
        assert httpx.post(server.url, content=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(server.url, content=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret-collector"}
        assert httpx.post(server.url, content=body, headers=right).status_code == 200
    finally:
        code, printed = server.stop()
    assert code == 0 and not any("s3cret" in line for line in printed)
    refused = run("collect", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2 and "--token" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_collect_keeps_a_repeated_id_once_writes_out_0600_and_says_what_is_damaged(
    tmp_path: Path,
) -> None:
    out = tmp_path / "received.jsonl"
    server = Collect(out)
    try:
        twice = event()
        assert httpx.post(server.url, content=orjson.dumps(batch(twice, twice))).status_code == 200
    finally:
        server.stop()
    assert out.read_bytes().count(twice["id"].encode()) == 1
    assert os.stat(out).st_mode & 0o777 == 0o600
    damaged = tmp_path / "received.jsonl.store"  # the playbooks' store, beside --out
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE mine (x)")
    for content in (b"{not json", b"x" * 5000, foreign.read_bytes()):
        damaged.write_bytes(content)
        broken = run("collect", "--port", "0", "--out", str(out), "--block-after", "3")
        assert broken.returncode == 2 and "Traceback" not in broken.stderr
        assert "not an event store" in broken.stderr, broken.stderr
        assert damaged.read_bytes() == content  # refused, never overwritten


def test_every_reporting_command_speaks_json_and_takes_global_options_after_its_name(
    spool_path: Path, tmp_path: Path, collect: Collect
) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(f'{{"name": "e", "properties": {{"i": {i}}}}}\n' for i in range(30)))
    imported = run("import", str(lines), "--path", str(spool_path), "--json")
    assert imported.returncode == 0, imported.stderr
    assert orjson.loads(imported.stdout) | {"seconds": 0} == {
        "imported": 30, "invalid": 0, "dropped": 0, "seconds": 0}  # fmt: skip
    migrated = orjson.loads(run("migrate", "--path", str(spool_path), "--json").stdout)
    assert migrated["before"] == migrated["after"]
    flushed = run("flush", "--url", collect.url, "--path", str(spool_path), "--json")
    assert flushed.returncode == 0, flushed.stderr
    assert orjson.loads(flushed.stdout)["delivered"] == 30  # one object: no progress lines
    pruned = orjson.loads(run("prune", "--dry-run", "--json", "--path", str(spool_path)).stdout)
    assert pruned == {"dry_run": True, "age": 0, "size": 0}
    for command, key in (("requeue", "requeued"), ("purge", "purged")):
        extra = ("--yes",) if command == "purge" else ()
        done = run(command, "--status", "rejected", *extra, "--json", "--path", str(spool_path))
        assert orjson.loads(done.stdout) == {key: 0, "status": "rejected"}, done.stderr


def test_help_names_values_and_shows_flags_as_flags() -> None:
    for command in ("purge", "import", "flush", "collect", "inspect"):
        shown = run(command, "--help").stdout
        options = shown.split("Options:")[-1]  # Typer still types its arguments (FILE <str>)
        assert "<bool>" not in shown and "<list" not in shown and "<str>" not in options, shown
    assert "--status STATUS" in run("purge", "--help").stdout
    assert "  --yes " in run("purge", "--help").stdout


def test_import_says_how_far_it_is_without_a_terminal(spool_path: Path, tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_text(
        "".join(f'{{"name": "e", "properties": {{"i": {i}}}}}\n' for i in range(20000))
    )
    done = run("--path", str(spool_path), "import", str(lines))
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("imported ")]
    assert 5 <= len(steps) <= 10 and steps[-1] == "imported 100% of the file", steps
    assert done.stdout.startswith("imported 20000 events")


@pytest.mark.slow
def test_top_in_a_real_terminal(spool_path: Path, tmp_path: Path) -> None:
    fill(spool_path, 25)
    session = f"top{os.getpid()}"
    command = f"{SCRIPT} --path {spool_path} top"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command],
                   check=True)  # fmt: skip

    def pane() -> str:
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                               capture_output=True, text=True, check=False)  # fmt: skip
        return shown.stdout

    try:
        deadline = time.monotonic() + 20
        while "25 (0 being sent)" not in pane():
            assert time.monotonic() < deadline, pane()
            time.sleep(0.2)
        screen = pane()
        assert "tracked/s" in screen and "lag" in screen and "q quits" in screen
        fill(spool_path, 10)  # the view follows the spool
        while "35 (0 being sent)" not in pane():
            assert time.monotonic() < deadline, pane()
            time.sleep(0.2)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        while subprocess.run(["tmux", "has-session", "-t", session],
                             capture_output=True).returncode == 0:  # fmt: skip
            assert time.monotonic() < deadline, "q did not quit"
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
