"""track() during an outage burst, next to the same burst with a healthy collector.

    make bench                       # or: .venv/bin/python bench/outage.py [--events N]

Each round bursts ~1 KiB events as fast as one thread goes into a fresh spool bounded at
``--max-bytes`` (the burst is several times the bound), once with a local collector that accepts
everything and once with a URL where nothing listens, so that the size bound does all the work.
A raw sqlite3 insert of the same encoded event is the floor. The contenders take turns, round
after round. Reported: p50/p99/p99.9 per call, the ratios to the healthy run, and the largest
size the spool's files reached (sampled every 10 ms) against the bound.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqreen
from sqreen.cli.reference import Answer, Receiver
from sqreen.event import build
from sqreen.storage.bound import ceiling
from sqreen.storage.files import file_bytes

MiB = 1024 * 1024
OPTIONS = {"properties": {"plan": "pro", "pad": "x" * 950}}


@contextmanager
def sampled(path: Path, peaks: list[int]) -> Iterator[None]:
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peaks.append(file_bytes(path))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def burst(track: Callable[[], object], events: int) -> list[int]:
    clock, samples = time.perf_counter_ns, []
    for _ in range(events):
        start = clock()
        track()
        samples.append(clock() - start)
    return samples


def floor(directory: Path, events: int) -> list[int]:
    conn = sqlite3.connect(directory / "floor.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, id, name, at, payload)")
    event = build("bench.outage", OPTIONS)

    def call() -> None:
        conn.execute(
            "INSERT INTO events VALUES (NULL, ?, ?, ?, ?)", (event.id, event.name, 0, event.payload)
        )
        conn.commit()

    try:
        return burst(call, events)
    finally:
        conn.close()


def ours(directory: Path, url: str, max_bytes: int, events: int, peaks: list[int]) -> list[int]:
    path = directory / "spool.db"
    spooler = sqreen.Spooler(path=path, url=url, max_bytes=max_bytes, heartbeat_delay=1)
    try:
        with sampled(path, peaks):
            return burst(lambda: spooler.track("bench.outage", OPTIONS), events)
    finally:
        spooler.close(timeout=1)


def percentiles(samples: list[int]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return tuple(ordered[min(n - 1, int(n * q))] / 1e3 for q in (0.5, 0.99, 0.999))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30000, help="events per burst")
    parser.add_argument("--max-bytes", type=int, default=8 * MiB)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("sqreen").setLevel(logging.CRITICAL)
    collector = Receiver(lambda received: Answer(200))
    collector.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    timings: dict[str, list[int]] = {"floor (sqlite3)": [], "healthy": [], "outage": []}
    peaks: dict[str, list[int]] = {"healthy": [], "outage": []}
    for _ in range(args.rounds):
        for name in timings:
            with tempfile.TemporaryDirectory() as tmp:
                directory = Path(tmp)
                if name == "floor (sqlite3)":
                    timings[name] += floor(directory, args.events)
                    continue
                url = collector.url if name == "healthy" else nowhere
                timings[name] += ours(directory, url, args.max_bytes, args.events, peaks[name])
    collector.stop()
    print(
        f"{args.rounds} rounds of {args.events} events of ~1 KiB, max_bytes "
        f"{args.max_bytes / MiB:g} MiB (ceiling {ceiling(args.max_bytes) / MiB:.2f} MiB)"
    )
    healthy = percentiles(timings["healthy"])
    for name, samples in timings.items():
        p50, p99, p999 = percentiles(samples)
        line = f"{name:16} p50 {p50:8.1f} µs  p99 {p99:8.1f} µs  p99.9 {p999:9.1f} µs"
        if name != "healthy":
            ratios = "/".join(
                f"{a / b:.2f}" for a, b in zip((p50, p99, p999), healthy, strict=True)
            )
            line += f"  vs healthy {ratios}"
        if name in peaks:
            line += f"  largest {max(peaks[name], default=0) / args.max_bytes:.2f}x the bound"
        print(line)


if __name__ == "__main__":
    main()
