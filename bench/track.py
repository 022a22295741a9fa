"""track() against the floor (raw sqlite3) and peers, measured side by side in one run.

    make bench                       # or: .venv/bin/python bench/track.py [--events N]

The floor uses SQLite's default 4 KiB pages; a second floor uses the spool's 2 KiB pages, so
that the ratio to the first does not credit the page size to the code. Each contender writes
into its own fresh spool in a temporary directory. Calls are timed one by
one and the contenders take turns in rounds, so that drift in this machine's speed (a shared VM)
hits them all alike. Reported: events/s (from the mean), p50/p99/p99.9 per call, and ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

import sqreen
from sqreen.event import build
from sqreen.storage.opening import PAGE_SIZE

PROPERTIES = {"plan": "pro", "seats": 3, "country": "FR", "trial": False}
USER = {"email": "ada@example.com", "id": "42"}
OPTIONS = {"properties": PROPERTIES, "user_identifiers": USER}
SCHEMA = (
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL, "
    "enqueued_at REAL NOT NULL, payload BLOB NOT NULL, status INTEGER NOT NULL DEFAULT 0)"
)
INSERT = "INSERT INTO events (id, name, enqueued_at, payload) VALUES (?, ?, ?, ?)"

Call = Callable[[], object]


def floor(directory: Path, synchronous: str, page_size: int | None = None) -> Call:
    """Raw sqlite3: one INSERT + COMMIT of an already encoded event, SQLite's defaults otherwise
    (or the spool's page size, to show what that choice alone is worth)."""
    conn = sqlite3.connect(directory / "floor.db", check_same_thread=False)
    if page_size is not None:
        conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(SCHEMA)
    conn.commit()
    event = build("bench.event", OPTIONS)

    def call() -> None:
        conn.execute(INSERT, (event.id, event.name, time.time(), event.payload))
        conn.commit()

    return call


def ours(directory: Path, durability: str, library: Any = sqreen) -> Call:
    spooler = library.Spooler(path=directory / "spool.db", durability=durability)
    spooler.track("warm.up")
    return lambda: spooler.track("bench.event", OPTIONS)


def sqlalchemy_core(directory: Path) -> Call:
    """What the insert would cost through SQLAlchemy Core (why track() does not use it)."""
    from sqlalchemy import create_engine, insert

    from sqreen.storage.tables import events

    engine = create_engine(f"sqlite:///{directory / 'core.db'}")
    events.metadata.create_all(engine)
    conn = engine.connect()
    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
    event = build("bench.event", OPTIONS)
    statement = insert(events)

    def call() -> None:
        conn.execute(
            statement,
            {
                "id": event.id,
                "name": event.name,
                "enqueued_at": time.time(),
                "payload": event.payload,
            },
        )
        conn.commit()

    return call


def persist_queue(directory: Path) -> Call:
    """persist-queue's durable SQLite queue, with its defaults (auto-commit on every put)."""
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(directory / "pq"), multithreading=True)
    return lambda: queue.put({"event": "bench.event", **OPTIONS})


def segment(directory: Path) -> Call:
    """Segment's client: validation, then an in-memory queue (lost on a crash), no consumer."""
    from segment.analytics import Client

    client = Client("bench-key", host="http://127.0.0.1:9", thread=0, max_queue_size=10**7)
    client.consumers = []  # thread=0 leaves this unset, and its atexit join reads it
    return lambda: client.track(user_id="42", event="bench.event", properties=PROPERTIES)


def run(contenders: dict[str, Call], events: int, rounds: int) -> dict[str, list[int]]:
    timings: dict[str, list[int]] = {name: [] for name in contenders}
    clock = time.perf_counter_ns
    per_round = events // rounds
    for _ in range(rounds):
        for name, call in contenders.items():
            samples = timings[name]
            for _ in range(per_round):
                start = clock()
                call()
                samples.append(clock() - start)
    return timings


def summary(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "rate": n / (sum(ordered) / 1e9),
        "p50": ordered[n // 2] / 1e3,
        "p99": ordered[int(n * 0.99)] / 1e3,
        "p999": ordered[int(n * 0.999)] / 1e3,
        "mean": statistics.fmean(ordered) / 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", 60000)))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--against", help="another checkout's spool/ folder, run alongside")
    args = parser.parse_args()
    logging.getLogger("segment").setLevel(logging.CRITICAL)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        makers: dict[str, Callable[[Path], Call]] = {
            "floor (sqlite3, process)": lambda d: floor(d, "NORMAL"),
            f"floor, {PAGE_SIZE // 1024} KiB pages": lambda d: floor(d, "NORMAL", PAGE_SIZE),
            "track() process": lambda d: ours(d, "process"),
            "SQLAlchemy Core insert": sqlalchemy_core,
            "persist-queue put": persist_queue,
            "Segment track (memory)": segment,
            "floor (sqlite3, power)": lambda d: floor(d, "FULL"),
            "track() power": lambda d: ours(d, "power"),
        }
        if args.against:
            from checkout import load, make_spool

            baseline = load(args.against)

            def against(directory: Path) -> Call:
                make_spool(args.against, directory / "spool.db")
                return ours(directory, "process", baseline)

            makers["track() process, against"] = against
        contenders = {}
        for i, (name, make) in enumerate(makers.items()):
            (root / str(i)).mkdir()
            contenders[name] = make(root / str(i))
        started = datetime.now(UTC)
        timings = run(contenders, args.events, args.rounds)
        results = {name: summary(samples) for name, samples in timings.items()}

    print(
        f"track() benchmark, {args.events} calls each in {args.rounds} interleaved rounds, "
        f"{started:%Y-%m-%d %H:%M} UTC, sqreen-spool {sqreen.__version__}"
    )
    print(f"{'contender':28} {'events/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9}")
    for name, r in results.items():
        print(f"{name:28} {r['rate']:9.0f} {r['p50']:8.1f} {r['p99']:8.1f} {r['p999']:9.1f}")
    fp, tp = results["floor (sqlite3, process)"], results["track() process"]
    fs = results[f"floor, {PAGE_SIZE // 1024} KiB pages"]
    fw, tw = results["floor (sqlite3, power)"], results["track() power"]
    seg = results["Segment track (memory)"]
    ratios = {
        "process: track() p50 / floor p50 (target <= 1.5)": tp["p50"] / fp["p50"],
        "process: track() mean / floor mean": tp["mean"] / fp["mean"],
        "process: track() p50 / p50 of the floor with the spool's page size": tp["p50"] / fs["p50"],
        "process: track() events/s / Segment events/s (target >= 2)": tp["rate"] / seg["rate"],
        "process: track() p99.9 µs (target < 200)": tp["p999"],
        "power: track() p50 / floor p50 (target <= 1.2)": tw["p50"] / fw["p50"],
        "power: track() mean / floor mean": tw["mean"] / fw["mean"],
    }
    if "track() process, against" in results:
        theirs = results["track() process, against"]
        ratios["process: track() p50, this checkout / --against (target <= 1.03)"] = (
            tp["p50"] / theirs["p50"]
        )
    print()
    for label, value in ratios.items():
        print(f"{label:64} {value:8.2f}")
    print(orjson.dumps({"results": results, "ratios": ratios}).decode())


if __name__ == "__main__":
    main()
