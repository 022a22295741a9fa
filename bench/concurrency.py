"""track() from many threads and many processes sharing one spool, next to raw sqlite3 with a
connection per thread (the floor of each row), in interleaved rounds.

    .venv/bin/python bench/concurrency.py [--events N] [--rounds R]

Rows (the concurrency issue's table): ``process`` mode with 1, 2, 4 and 8 threads in one
process; ``power`` mode with 1 and 8 threads; 1, 2 and 4 processes (one thread each) on one
spool in ``process`` mode, with the p99.9 and the slowest call. Events are small (4
properties). Each round writes into fresh files; figures are medians over rounds (events/s)
or over all calls of all rounds (latencies). Ratios are from this run only.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
from track import INSERT, SCHEMA

import sqreen
from sqreen.event import build

SMALL = {"properties": {"plan": "pro", "seats": 3, "trial": False, "country": "FR"}}

Writer = Callable[[], Callable[[], object]]  # per thread: make the thread's call


def ours(path: Path, durability: str) -> Writer:
    spooler = sqreen.Spooler(path=path, durability=durability)
    spooler.track("warm.up")
    return lambda: lambda: spooler.track("bench.event", SMALL)


def raw(path: Path, durability: str) -> Writer:
    """Raw sqlite3, a connection per thread: the floor."""
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute(SCHEMA)
    setup.commit()
    setup.close()
    event = build("bench.event", SMALL)
    synchronous = "FULL" if durability == "power" else "NORMAL"

    def per_thread() -> Callable[[], object]:
        conn = sqlite3.connect(path, timeout=5.0)
        conn.execute(f"PRAGMA synchronous={synchronous}")

        def call() -> None:
            conn.execute(INSERT, (event.id, event.name, time.time(), event.payload))
            conn.commit()

        return call

    return per_thread


def threaded(writer: Writer, threads: int, events: int) -> tuple[float, list[float]]:
    """``events`` calls split over ``threads`` threads: events/s and every call's seconds."""
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def run(index: int) -> None:
        call = writer()
        took = latencies[index]
        barrier.wait()
        for _ in range(events // threads):
            started = time.perf_counter()
            call()
            took.append(time.perf_counter() - started)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    every = [t for took in latencies for t in took]
    return len(every) / elapsed, every


def processes(path: Path, count: int, events: int) -> tuple[float, list[float]]:
    """``count`` processes tracking ``events / count`` events each into one spool."""
    sqreen.Spooler(path=path).track("created")
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", str(path), str(events // count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    for child in children:  # each has imported and opened the spool: start them together
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
    reports = [orjson.loads(child.communicate()[0]) for child in children]
    # From the first call of any process to the last call of any: not their start-up or exit.
    elapsed = max(r["until"] for r in reports) - min(r["since"] for r in reports)
    every = [t for report in reports for t in report["took"]]
    return len(every) / elapsed, every


def child(path: str, events: int) -> None:
    spooler = sqreen.Spooler(path=path)
    spooler.track("warm.up")
    print("ready", flush=True)
    sys.stdin.readline()
    took = []
    since = time.time()
    for _ in range(events):
        started = time.perf_counter()
        spooler.track("bench.event", SMALL)
        took.append(time.perf_counter() - started)
    until = time.time()
    spooler.close()
    sys.stdout.write(orjson.dumps({"took": took, "since": since, "until": until}).decode())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=16_000)
    parser.add_argument("--power-events", type=int, default=1_600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    rates: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    calls: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    plan = [(mode, n) for mode, ns in (("process", (1, 2, 4, 8)), ("power", (1, 8))) for n in ns]
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for index, (mode, threads) in enumerate(plan):
                events = args.events if mode == "process" else args.power_events
                for name, make in (("ours", ours), ("raw", raw)):
                    path = Path(tmp) / f"{name}-{index}.db"
                    rate, took = threaded(make(path, mode), threads, events)
                    rates[name, mode, threads].append(rate)
                    calls[name, mode, threads] += took
            for count in (1, 2, 4):
                rate, took = processes(Path(tmp) / f"procs-{count}.db", count, args.events)
                rates["ours", "processes", count].append(rate)
                calls["ours", "processes", count] += took
    rate = {key: statistics.median(values) for key, values in rates.items()}
    print(f"track() under concurrency, small events, {args.rounds} interleaved rounds")
    for mode, ns in (("process", (1, 2, 4, 8)), ("power", (1, 8))):
        print(f"  {mode} mode, one process    " + "".join(f"{n:>9} thr" for n in ns))
        for name, label in (
            ("ours", "this project, events/s"),
            ("raw", "raw sqlite3, conn/thread"),
        ):
            print(f"    {label:26}" + "".join(f"{rate[name, mode, n]:>13,.0f}" for n in ns))
    print("  processes sharing one spool      1            2            4")
    print(
        "    events/s (all together) "
        + "".join(f"{rate['ours', 'processes', n]:>13,.0f}" for n in (1, 2, 4))
    )
    p999 = {n: percentile(calls["ours", "processes", n], 0.999) * 1e6 for n in (1, 2, 4)}
    slowest = {n: max(calls["ours", "processes", n]) * 1e3 for n in (1, 2, 4)}
    print("    p99.9 of one call, µs   " + "".join(f"{p999[n]:>13,.0f}" for n in (1, 2, 4)))
    print("    slowest call, ms        " + "".join(f"{slowest[n]:>13,.1f}" for n in (1, 2, 4)))
    one = statistics.median(calls["ours", "process", 1]) * 1e6
    print("ratios (targets of the concurrency issue):")
    scaling = rate["ours", "process", 8] / rate["ours", "process", 1]
    against_raw = rate["ours", "process", 8] / rate["raw", "process", 8]
    power = rate["ours", "power", 8] / rate["ours", "power", 1]
    print(f"  process 8 threads / 1 thread, events/s (>= 0.9): {scaling:.2f}")
    print(f"  process 8 threads, ours / raw (>= 1.0):          {against_raw:.2f}")
    print(f"  power 8 threads / 1 thread, events/s (>= 3):     {power:.2f}")
    print(f"  4 processes: slowest call, ms (<= 20):           {slowest[4]:.1f}")
    print(f"  4 processes: p99.9 / 1-process p99.9 (<= 3):     {p999[4] / p999[1]:.2f}")
    print(f"  1 thread p50: {one:.1f} µs (compare with a run of the previous code)")


if __name__ == "__main__":
    main()
