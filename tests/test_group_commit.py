"""Group commit in ``power`` mode: concurrent track() calls of one process share one
transaction, and each returns True only once a commit holding its own event is done."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sqreen

from .conftest import integrity, run_child, stored_events

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow

THREADS = 8


def tracking_threads(spooler: sqreen.Spooler, per_thread: int, pad: int = 0) -> dict[str, bool]:
    """Each thread's tags and what track() said of them."""
    said: dict[str, bool] = {}
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(per_thread):
            tag = f"{t}-{i}"
            ok = spooler.track("group", {"properties": {"tag": tag, "pad": "x" * pad}})
            with lock:
                said[tag] = ok

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return said


def test_threads_share_commits_and_every_event_is_stored_once(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path, durability="power")
    said = tracking_threads(spooler, 60)
    spooler.close()
    assert all(said.values()) and len(said) == THREADS * 60
    tags = [e["properties"]["tag"] for e in stored_events(spool_path)]
    assert sorted(tags) == sorted(said)
    assert integrity(spool_path) == "ok"


def test_a_failed_group_commit_is_false_for_every_caller_in_it(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path, durability="power")
    assert spooler.track("before")
    writer = spooler._store.connections._raw  # cap the file, as a full disk would
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages + 8}")
    said = tracking_threads(spooler, 10, pad=3000)
    failed = [tag for tag, ok in said.items() if not ok]
    assert failed, "the disk never filled"
    assert spooler.health().failures == {"disk_full": len(failed)}  # once per event
    stored = {e["properties"]["tag"] for e in stored_events(spool_path) if e["name"] == "group"}
    assert stored == {tag for tag, ok in said.items() if ok}  # never True for a lost event
    writer.execute("PRAGMA max_page_count = 1073741823")
    assert all(tracking_threads(spooler, 5).values())  # the cause gone, calls succeed
    spooler.close()
    assert integrity(spool_path) == "ok"


def test_fork_while_threads_are_queued_in_a_group_commit(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path, durability="power")
    assert spooler.track("before")
    stop = threading.Event()

    def busy(t: int) -> None:
        while not stop.is_set():
            spooler.track("parent", {"properties": {"t": t}})

    workers = [threading.Thread(target=busy, args=(t,)) for t in range(THREADS)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # commits in flight, calls queued behind them
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = (
                0 if all(spooler.track("child", {"properties": {"i": i}}) for i in range(50)) else 2
            )
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    stop.set()
    for worker in workers:
        worker.join()
    spooler.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert [e["name"] for e in stored_events(spool_path)].count("child") == 50
    assert integrity(spool_path) == "ok"


@pytest.mark.parametrize("durability", ["power", "process"])
def test_sigkill_during_group_commits_loses_no_acknowledged_event(
    spool_path: Path, durability: str
) -> None:
    """Threads x processes, killed at random moments: inside a group commit (``power``), or
    holding the writers' turn (both modes), which the kernel then frees."""
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    acknowledged: list[str] = []
    for _ in range(8):
        children = [
            run_child(
                "track_threads_forever", str(spool_path), "4", durability, stdout=subprocess.PIPE
            )
            for _ in range(2)
        ]
        # Past start-up (imports, opening: seconds on a loaded machine), then anywhere.
        firsts = [child.stdout.readline() for child in children if child.stdout is not None]
        time.sleep(rng.uniform(0.2, 1.0))
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        for child, first in zip(children, firsts, strict=True):
            assert child.stdout is not None
            output = first + child.stdout.read()
            child.wait()
            acknowledged += [line.decode() for line in output.split(b"\n")[:-1]]
    assert len(acknowledged) > 100, "the children hardly tracked anything"
    assert integrity(spool_path) == "ok"
    tags = [e["properties"]["tag"] for e in stored_events(spool_path)]
    assert len(tags) == len(set(tags)), "an event was stored twice"
    assert set(acknowledged) <= set(tags)


def test_a_slow_commit_leaves_no_caller_behind_and_false_means_not_stored(
    spool_path: Path,
) -> None:
    """One commit stalls 2.5 s (a slow fsync) while eight threads keep tracking with a 0.5 s
    lock timeout: the callers that give up leave the queue, those whose events the commit
    took wait for it, the group finds a leader again once the disk is fast, and each call's
    answer says whether its event is stored."""
    spooler = sqreen.Spooler(path=spool_path, durability="power", lock_timeout=0.5)
    store = spooler._store
    original, stalled = store._commit_many, threading.Event()

    def commit_slowly(take: Any, shared: bool) -> bool:
        def take_then_stall() -> Any:
            events = take()
            if not stalled.is_set():
                stalled.set()
                time.sleep(2.5)  # the disk, for this one commit
            return events

        return original(take_then_stall, shared)

    store._commit_many = commit_slowly  # type: ignore[method-assign]
    said: dict[str, tuple[bool, float]] = {}
    lock = threading.Lock()
    started = time.monotonic()

    def work(t: int) -> None:
        i = 0
        while time.monotonic() - started < 5.0:
            tag = f"{t}-{i}"
            ok = spooler.track("slow", {"properties": {"tag": tag}})
            with lock:
                said[tag] = (ok, time.monotonic() - started)
            i += 1

    # Four threads meet the stalled commit; four more arrive while it stalls, and give up.
    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for worker in workers[:4]:
        worker.start()
    assert stalled.wait(5)
    for worker in workers[4:]:
        worker.start()
    for worker in workers:
        worker.join()
    spooler.close()
    assert any(not ok for ok, _ in said.values()), "no caller gave up during the stall"
    late = [ok for ok, at in said.values() if at > 4.0]
    assert late and all(late), "the group found no leader after the stall"
    stored = [e["properties"]["tag"] for e in stored_events(spool_path)]
    assert len(stored) == len(set(stored))
    assert set(stored) == {tag for tag, (ok, _) in said.items() if ok}
