"""Delivery across real processes: exit flush, fork, and chaos with SIGKILL (the size bound's
own tests are in test_bound.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import sqreen

from . import collector as c
from .child import ROOMY
from .conftest import counters, rows, run_child

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def test_exit_flush_delivers_what_the_process_tracked(spool_path: Path, collector: Any) -> None:
    child = run_child("track_and_exit", str(spool_path), collector.url, "300", "5")
    assert child.wait(30) == 0
    assert len(collector.accepted_events()) == 300
    assert rows(spool_path) == []


def test_exit_is_bounded_when_the_collector_hangs(spool_path: Path, collector: Any) -> None:
    collector.default = c.hang(30)
    started = time.monotonic()
    child = run_child(
        "track_and_exit", str(spool_path), collector.url, "50", "1.5", stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline() == b"tracked\n"
    tracked_at = time.monotonic()
    assert child.wait(30) == 0
    assert time.monotonic() - tracked_at < 1.5 + 1.0  # the shutdown timeout, plus a margin
    assert time.monotonic() - started < 15
    assert len(rows(spool_path, "status = 0")) == 50  # kept for the next start


def test_a_process_that_never_tracked_does_no_exit_flush(tmp_path: Path, collector: Any) -> None:
    script = (
        "import sqreen; "
        f"sqreen.configure(path={str(tmp_path / 'idle.db')!r}, url={collector.url!r})"
    )
    import sys

    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert collector.requests == []
    assert not (tmp_path / "idle.db").exists()


def test_forked_children_track_and_flush(spool_path: Path, collector: Any) -> None:
    # Children close their spooler (stopping its thread, flushing), then leave with os._exit as
    # forked workers do. A crash with a batch in flight would legitimately send it twice: that
    # is the chaos test's business, not this one's.
    spooler = sqreen.Spooler(
        path=spool_path, url=collector.url, heartbeat_delay=0.2, batch_size=50, lease=1.0
    )
    for i in range(100):
        assert spooler.track("parent", {"properties": {"i": i}})
    children = []
    for child_number in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = all(
                    spooler.track("child", {"properties": {"c": child_number, "i": i}})
                    for i in range(200)
                )
                result = spooler.close(timeout=20)
                code = 0 if ok and result.failed == 0 else 2
            finally:
                os._exit(code)
        children.append(pid)
    for i in range(100, 200):
        assert spooler.track("parent", {"properties": {"i": i}})
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    deadline = time.monotonic() + 20
    while spooler.flush(timeout=20).pending and time.monotonic() < deadline:
        time.sleep(0.1)  # rows leased by the background heartbeat are being delivered
    assert rows(spool_path, "status = 0") == []
    spooler.close()
    posted = Counter(e["id"] for e in collector.accepted_events())
    assert len(posted) == 200 + 3 * 200
    assert max(posted.values()) == 1  # nothing sent twice (no failures, so no legitimate retry)


def test_chaos_every_acknowledged_event_arrives(spool_path: Path, collector: Any) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "0")) or None)
    flaky = [c.accept(), c.accept(), c.status(500), c.status(503), c.reset(), c.hang(0.8)]
    collector.default = lambda batch: rng.choice(flaky)(batch)
    sqreen.Spooler(path=spool_path).close()
    acknowledged: set[str] = set()
    producer_runs = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        producers = [
            run_child("track_forever", str(spool_path), stdout=subprocess.PIPE) for _ in range(2)
        ]
        flushers = [run_child("flush_forever", str(spool_path), collector.url) for _ in range(2)]
        for producer in producers:  # kill at random once they are all running
            assert producer.stdout is not None
            acknowledged.add(producer.stdout.readline().decode().strip())
        time.sleep(rng.uniform(0.1, 1.5))
        for process in producers + flushers:
            process.send_signal(signal.SIGKILL)
        producer_runs += len(producers)
        for producer in producers:
            assert producer.stdout is not None
            acknowledged |= {line.decode() for line in producer.stdout.read().split(b"\n")[:-1]}
            producer.wait()
        for flusher in flushers:
            flusher.wait()
    collector.default = c.accept()
    time.sleep(2.1)  # the killed flushers' leases (2 s) run out
    final = sqreen.Spooler(path=spool_path, url=collector.url, max_bytes=ROOMY)
    assert final.flush(timeout=60).pending == 0
    final.close()
    assert not [name for name in counters(spool_path) if name.startswith("dropped.")]
    received = Counter(e["properties"]["tag"] for e in collector.received_events())
    assert len(acknowledged) > 1000, "the producers hardly tracked anything"
    assert acknowledged <= set(received)  # at least once
    # Deduplicated, exactly the acknowledged set, but for events committed by a producer that
    # was killed before it could report them: at most one per producer killed.
    assert len(set(received) - acknowledged) <= producer_runs
    duplicates = sum(received.values()) - len(received)
    print(
        f"chaos: {len(acknowledged)} acknowledged, {len(received)} distinct received, "
        f"{duplicates} duplicates ({duplicates / max(1, len(received)):.2%})"
    )
