"""Programs the tests run as real subprocesses (crashed, raced, forked).

Usage: python child.py COMMAND SPOOL_PATH [ARGS...]
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable

import sqreen

ROOMY = 4 << 30


def track_forever(path: str) -> None:
    """Track events until killed, writing each acknowledged event's number to stdout.

    The size bound is out of the way (it has tests of its own): on a fast machine the runs of
    a crash test outgrow the default 64 MiB, and its counted drops would read as losses."""
    spooler = sqreen.Spooler(path=path, max_bytes=ROOMY)
    out = sys.stdout.buffer
    n = 0
    while True:
        n += 1
        tag = f"{os.getpid()}-{n}"
        if spooler.track("crash.test", {"properties": {"tag": tag, "pad": "x" * (n % 300)}}):
            out.write(tag.encode() + b"\n")
            out.flush()


def track_threads_forever(path: str, threads: str, durability: str) -> None:
    """Track from ``threads`` threads until killed, writing each acknowledged event's tag to
    stdout (in ``power`` mode the threads' calls share group commits)."""
    spooler = sqreen.Spooler(path=path, durability=durability)
    out = sys.stdout.buffer
    printing = threading.Lock()

    def work(t: int) -> None:
        n = 0
        while True:
            n += 1
            tag = f"{os.getpid()}-{t}-{n}"
            if spooler.track("crash.test", {"properties": {"tag": tag}}):
                with printing:
                    out.write(tag.encode() + b"\n")
                    out.flush()

    in_threads(int(threads), work)


def in_threads(threads: int, work: Callable[[int], None]) -> None:
    """Run ``work(t)`` in ``threads`` threads at once; return when all are done."""
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def track_threads(path: str, threads: str, per_thread: str) -> None:
    """Track ``per_thread`` events from each of ``threads`` threads; exit 1 on any failure."""
    spooler = sqreen.Spooler(path=path)
    failures: list[str] = []

    def work(t: int) -> None:
        for i in range(int(per_thread)):
            tag = f"{os.getpid()}-{t}-{i}"
            try:
                if not spooler.track("race", {"properties": {"tag": tag}}):
                    failures.append(f"{tag}: {spooler.health().last_error}")
            except Exception as exc:
                failures.append(f"{tag}: {exc!r}")

    in_threads(int(threads), work)
    spooler.close()
    if failures:
        print("\n".join(failures[:5]), file=sys.stderr)
        sys.exit(1)


def hold_lock(path: str, seconds: str) -> None:
    """Hold SQLite's exclusive lock on the spool for ``seconds``; say 'locked' once held."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(seconds))
    conn.execute("ROLLBACK")


def hold_flock(path: str) -> None:
    """Hold an exclusive flock on ``path`` (made if missing) until killed; say 'held'."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(3600)


def hold_turn(path: str) -> None:
    """Hold the spool's writers' turn (inside a write transaction) until killed; say 'held'.
    Another process must be on the spool already: alone, a writer does not take the turn."""
    spooler = sqreen.Spooler(path=path)
    assert spooler.track("turn.holder")
    turn = spooler._store.turn
    with spooler._store.write():
        assert turn._holding, "no other process was on the spool"
        print("held", flush=True)
        time.sleep(3600)


def check_imports(path: str) -> None:
    """Open an existing, current spool, track, checkpoint, count and close; print which of the
    heavy libraries got imported."""
    spooler = sqreen.Spooler(path=path)
    assert spooler.track("import.check")
    assert spooler._store.checkpoint(truncate=True)
    assert spooler._store.count_pending() >= 1
    spooler.close()
    heavy = ("alembic", "sqlalchemy", "httpx", "tenacity")
    print(" ".join(m for m in heavy if m in sys.modules) or "none")


def track_and_exit(path: str, url: str, count: str, shutdown_timeout: str) -> None:
    """Track ``count`` events and return from main: the exit flush must deliver them."""
    spooler = sqreen.Spooler(
        path=path,
        url=url,
        shutdown_timeout=float(shutdown_timeout),
        heartbeat_delay=3600,
        http_timeout=30,
    )
    for i in range(int(count)):
        assert spooler.track("exit.test", {"properties": {"i": i}})
    print("tracked", flush=True)


def flush_forever(path: str, url: str) -> None:
    """Flush the spool to ``url`` again and again, with short leases."""
    spooler = sqreen.Spooler(
        path=path,
        url=url,
        lease=2,
        http_timeout=0.5,
        retry_attempts=2,
        batch_size=200,
        max_bytes=ROOMY,
    )
    while True:
        spooler.flush(timeout=2)
        time.sleep(0.01)


def track_outage(
    path: str, url: str, max_bytes: str, threads: str, count: str, durability: str = "process"
) -> None:
    """Track ``count`` ~1 KiB events from ``threads`` threads as fast as they go into a spool
    bounded at ``max_bytes`` whose collector is unreachable; print how many were acknowledged."""
    spooler = sqreen.Spooler(
        path=path,
        durability=durability,
        url=url,
        max_bytes=int(max_bytes),
        heartbeat_delay=0.5,
        http_timeout=2,
        shutdown_timeout=1,
    )
    acknowledged = [0] * int(threads)
    per_thread = int(count) // int(threads)

    def work(t: int) -> None:
        for i in range(per_thread):
            pad = os.urandom(450 + i % 50).hex()  # random: packing cannot shrink it
            if spooler.track("outage", {"properties": {"t": t, "i": i, "pad": pad}}):
                acknowledged[t] += 1

    in_threads(int(threads), work)
    spooler.close()
    print(sum(acknowledged), flush=True)


def flush_once(path: str, url: str) -> None:
    """Flush the spool to ``url`` once; print what happened and this process's peak memory
    (MiB; VmHWM, which unlike ru_maxrss starts over at exec)."""
    result = sqreen.Spooler(path=path, url=url, http_timeout=5).flush(timeout=30)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    print(f"{result.delivered} {result.failed} {peak // 1024}", flush=True)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {
        "track_forever": track_forever,
        "track_threads": track_threads,
        "hold_lock": hold_lock,
        "hold_flock": hold_flock,
        "check_imports": check_imports,
        "track_and_exit": track_and_exit,
        "flush_forever": flush_forever,
        "track_outage": track_outage,
        "track_threads_forever": track_threads_forever,
        "hold_turn": hold_turn,
        "flush_once": flush_once,
    }[command](*arguments)
