"""The writers' turn (``<spool>-turn``): writers of every process queue on it instead of
SQLite's sleeping busy handler. A holder that dies frees it; one that is stopped holds everyone
else off for at most the lock timeout, and they go on once it runs again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sqreen
from sqreen.storage.locks import PRESENCE_LOOK

from .conftest import integrity, run_child, stored_events

# Real processes, signals, servers and waits: left out of `make test-fast`.
pytestmark = pytest.mark.slow

LOCK_TIMEOUT = 0.5


@pytest.fixture
def spooler(spool_path: Path) -> sqreen.Spooler:
    """This process's spooler, on the spool first: a writer that finds no other process there
    does not take the turn (see sqreen.storage.locks.Turn)."""
    ours = sqreen.Spooler(path=spool_path, lock_timeout=LOCK_TIMEOUT)
    assert ours.track("turn", {"properties": {"tag": "first"}})
    return ours


@pytest.fixture
def holder(spool_path: Path, spooler: sqreen.Spooler) -> Iterator[subprocess.Popen[bytes]]:
    child = run_child("hold_turn", str(spool_path), stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"held\n"
    yield child
    child.kill()
    child.wait()


def timed_track(spooler: sqreen.Spooler, tag: str) -> tuple[bool, float]:
    started = time.monotonic()
    ok = spooler.track("turn", {"properties": {"tag": tag}})
    return ok, time.monotonic() - started


def test_a_killed_holder_frees_the_turn_at_once(
    spool_path: Path, spooler: sqreen.Spooler, holder: subprocess.Popen[bytes]
) -> None:
    time.sleep(0.1)  # past PRESENCE_LOOK: this process has seen the holder
    ok, took = timed_track(spooler, "while-held")
    assert not ok, "an event was acknowledged while another process held the turn"
    assert LOCK_TIMEOUT * 0.9 <= took <= LOCK_TIMEOUT + 0.5, "the wait was not the lock timeout"
    assert spooler.health().failures == {"lock_timeout": 1}
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    ok, took = timed_track(spooler, "after-kill")
    assert ok and took < LOCK_TIMEOUT, f"after the holder died, track() took {took:.3f} s"
    tags = [e["properties"]["tag"] for e in stored_events(spool_path) if e["name"] == "turn"]
    assert tags == ["first", "after-kill"]


def test_a_stopped_writer_holds_the_others_for_at_most_the_lock_timeout(
    spool_path: Path, spooler: sqreen.Spooler
) -> None:
    """SIGSTOP a process tracking from 2 threads at random moments: it may be stopped holding
    the turn (or SQLite's write lock). Our calls meanwhile return within the lock timeout,
    True or False; after SIGCONT everyone goes on, and every acknowledged event is stored."""
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    child = run_child(
        "track_threads_forever", str(spool_path), "2", "process", stdout=subprocess.PIPE
    )
    ours: dict[str, bool] = {}
    longest, refused = 0.0, 0
    assert child.stdout is not None
    first = child.stdout.readline()  # past its start-up
    try:
        for stop in range(6):
            time.sleep(rng.uniform(0.05, 0.3))
            os.kill(child.pid, signal.SIGSTOP)
            for i in range(3):
                ok, took = timed_track(spooler, f"stopped-{stop}-{i}")
                ours[f"stopped-{stop}-{i}"] = ok
                longest, refused = max(longest, took), refused + (not ok)
            os.kill(child.pid, signal.SIGCONT)
            ok, took = timed_track(spooler, f"running-{stop}")
            assert ok, f"after SIGCONT, track() failed: {spooler.health().last_error}"
            ours[f"running-{stop}"] = ok
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
    theirs = [line.decode() for line in (first + child.stdout.read()).split(b"\n")[:-1]]
    child.wait()
    assert longest <= LOCK_TIMEOUT + 0.5, f"a call waited {longest:.3f} s for a stopped writer"
    assert spooler.health().failures.get("lock_timeout", 0) == refused
    assert integrity(spool_path) == "ok"
    tags = [e["properties"]["tag"] for e in stored_events(spool_path)]
    acknowledged = set(theirs) | {tag for tag, ok in ours.items() if ok}
    assert len(tags) == len(set(tags)), "an event was stored twice"
    assert acknowledged <= set(tags)
    assert len(theirs) > 100, "the child hardly tracked anything"


def test_a_lone_writer_skips_the_turn_until_another_process_arrives(spool_path: Path) -> None:
    """Alone, a writer has no one to queue behind and skips the two system calls; once another
    process is on the spool, it takes the turn within PRESENCE_LOOK, and skips it again once
    that process is gone."""
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("turn", {"properties": {"tag": "alone"}})
    store = spooler._store

    def takes_the_turn() -> bool:
        time.sleep(PRESENCE_LOOK * 2)
        with store.write():
            return store.turn._holding

    assert not takes_the_turn()
    other = run_child("track_forever", str(spool_path), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not takes_the_turn():
            assert time.monotonic() < deadline, "the other process was never seen"
    finally:
        other.kill()
        other.wait()
    assert not takes_the_turn()
