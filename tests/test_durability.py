"""Crashes and concurrency: every acknowledged event is in the spool, exactly once, intact."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sqreen
from sqreen.storage.opening import PAGE_SIZE

from .conftest import counters, integrity, run_child, stored_events

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow

KILLS = 24


def test_sigkill_at_random_moments_loses_no_acknowledged_event(spool_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    acknowledged: list[str] = []
    for kill in range(KILLS):
        child = run_child("track_forever", str(spool_path), stdout=subprocess.PIPE)
        assert child.stdout is not None
        first = b""
        # A third of the kills count from the start (before the spool exists on the first run:
        # mid-migration; then opening it), the others from the first acknowledged event, deep
        # into the insert loop however slow the start-up is on a loaded machine.
        if kill % 3:
            first = child.stdout.readline()
        time.sleep(rng.uniform(0.05, 1.2))
        os.kill(child.pid, signal.SIGKILL)
        output = first + child.stdout.read()
        child.wait()
        assert child.returncode == -signal.SIGKILL
        # A torn last line was never fully reported as acknowledged: count whole lines only.
        acknowledged += output.split(b"\n")[:-1] and [
            line.decode() for line in output.split(b"\n")[:-1]
        ]
    assert len(acknowledged) > 1000, "the children hardly tracked anything"
    assert integrity(spool_path) == "ok"
    stored = stored_events(spool_path)
    by_tag = {event["properties"]["tag"]: event for event in stored}
    assert len(by_tag) == len(stored), "an event was stored twice"
    missing = [tag for tag in acknowledged if tag not in by_tag]
    assert missing == []
    for tag in acknowledged:  # intact: the payload is the event the child wrote
        n = int(tag.split("-")[1])
        assert by_tag[tag]["properties"] == {"tag": tag, "pad": "x" * (n % 300)}


def test_processes_and_threads_share_one_spool(spool_path: Path) -> None:
    processes, threads, per_thread = 4, 4, 250
    children = [
        run_child(
            "track_threads", str(spool_path), str(threads), str(per_thread), stderr=subprocess.PIPE
        )
        for _ in range(processes)
    ]
    for child in children:
        _, errors = child.communicate(timeout=120)
        assert child.returncode == 0, errors.decode()
    tags = [event["properties"]["tag"] for event in stored_events(spool_path)]
    assert len(tags) == processes * threads * per_thread
    assert len(set(tags)) == len(tags)
    assert integrity(spool_path) == "ok"


def test_threads_in_one_process(spooler: sqreen.Spooler, spool_path: Path) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(300):
                assert spooler.track("thread", {"properties": {"tag": f"{t}-{i}"}})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len({e["properties"]["tag"] for e in stored_events(spool_path)}) == 8 * 300


def test_fork_child_opens_its_own_connection(spooler: sqreen.Spooler, spool_path: Path) -> None:
    assert spooler.track("parent.before")
    parent_connection = spooler._store.connections._raw
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection, and must not deadlock
        code = 1
        try:
            ok = all(spooler.track("child", {"properties": {"i": i}}) for i in range(100))
            code = 0 if ok and spooler._store.connections._raw is not parent_connection else 2
        finally:
            os._exit(code)
    for i in range(100):
        assert spooler.track("parent", {"properties": {"i": i}})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spooler._store.connections._raw is parent_connection
    names = [e["name"] for e in stored_events(spool_path)]
    assert names.count("child") == 100 and names.count("parent") == 101 - 1 + 0
    assert integrity(spool_path) == "ok"


@pytest.mark.parametrize("max_bytes", [64 * 1024 * 1024, 2 * 1024 * 1024])
def test_a_reader_on_the_wal_never_holds_inserts_off(spool_path: Path, max_bytes: int) -> None:
    # A RESTART or TRUNCATE checkpoint waits for this reader, for up to lock_timeout (ten minutes
    # here), and inserts would wait behind it. Neither the WAL's catch-up (the default bound) nor
    # the size bound's truncation (the small bound, which 3,000 events exceed) may do that.
    spooler = sqreen.Spooler(path=spool_path, lock_timeout=600, max_bytes=max_bytes)
    spooler.track("first")
    reader = sqlite3.connect(spool_path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
    wal = Path(f"{spool_path}-wal")
    done = threading.Event()

    def burst() -> None:
        for i in range(3000):  # 3 MiB of rows, some 10 MiB of WAL
            assert spooler.track("burst", {"properties": {"i": i, "pad": os.urandom(450).hex()}})
        spooler._upkeep._maintain()
        done.set()

    threading.Thread(target=burst, daemon=True).start()
    assert done.wait(120), "inserts waited for a reader"
    assert wal.stat().st_size > spooler._store.wal_limit  # the pinned WAL could not start over
    assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)  # its snapshot
    reader.execute("ROLLBACK")
    reader.close()
    spooler.close()
    kept, dropped = len(stored_events(spool_path)), counters(spool_path).get("dropped.size", 0)
    assert kept + dropped == 3001 and (dropped > 0) == (max_bytes < 4 * 1024 * 1024)
    assert integrity(spool_path) == "ok"


def test_wal_is_checkpointed_in_the_background(spooler: sqreen.Spooler, spool_path: Path) -> None:
    wal = Path(f"{spool_path}-wal")
    for i in range(12000):
        spooler.track("burst", {"properties": {"i": i, "pad": "x" * 200}})
    deadline = time.monotonic() + 5
    with sqlite3.connect(spool_path) as conn:
        total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert total == 12000
    # The brake holds the WAL near twice its limit; without checkpoints (auto-checkpointing is
    # off) each commit would add at least a page to it.
    limit = 3 * spooler._store.wal_limit
    assert 1.9 * limit < 12000 * PAGE_SIZE
    while time.monotonic() < deadline and wal.stat().st_size > limit:
        time.sleep(0.05)
    assert wal.stat().st_size <= limit


def test_a_new_spool_uses_the_small_pages(spooler: sqreen.Spooler, spool_path: Path) -> None:
    assert spooler.track("first")
    with sqlite3.connect(spool_path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental


def test_opening_a_connection_writes_nothing(spooler: sqreen.Spooler, spool_path: Path) -> None:
    # A connection's setup must not write: it would wait for another process's write lock (up
    # to lock_timeout) and, before its own pragmas are set, checkpoint a large WAL on the spot.
    assert spooler.track("first")
    spooler.close()
    wal = Path(f"{spool_path}-wal")
    holder = sqlite3.connect(spool_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        size = wal.stat().st_size
        reader = sqreen.Spooler(path=spool_path, lock_timeout=5)
        started = time.monotonic()
        assert reader._store.count_pending() == 1
        assert time.monotonic() - started < 2.5
        assert wal.stat().st_size == size
        reader.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
