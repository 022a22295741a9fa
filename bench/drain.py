"""Drain throughput: a spool of N events delivered to a local collector, next to the raw ceiling.

    make bench                       # or: .venv/bin/python bench/drain.py [--events N]

The ceiling is plain sqlite3 + the same wire work done by hand: select 1000 stored events,
unpack them (see sqreen.storage.packing: decompress with the spool's dictionary, put the id
back), join them into a batch body, gzip (level 1), POST on one keep-alive connection, delete
them.
The collector here only reads the body and answers 200, in one write, so the figures measure
the sender. Also reported: track() latency while a drain runs, next to it without one.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqreen

PROPERTIES = {"plan": "pro", "seats": 3, "country": "FR", "trial": False}
OPTIONS = {"properties": PROPERTIES, "user_identifiers": {"email": "ada@example.com"}}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def fill(path: Path, n: int) -> None:
    spooler = sqreen.Spooler(path=path)
    for i in range(n):
        spooler.track("bench.drain", {**OPTIONS, "properties": {**PROPERTIES, "i": i}})
    spooler.close()


def ceiling(path: Path, port: int | None) -> float:
    """Events/s for select + encode + gzip (+ POST) + delete with plain sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    session = http.client.HTTPConnection("127.0.0.1", port) if port else None
    started, sent = time.perf_counter(), 0
    readers = unpackers(conn)
    query = "SELECT seq, payload FROM events ORDER BY seq LIMIT 1000"
    if readers is not None:
        query = "SELECT seq, payload, id, packing FROM events ORDER BY seq LIMIT 1000"
    while True:
        rows = conn.execute(query).fetchall()
        if not rows:
            break
        payloads = [p for _, p in rows] if readers is None else unpacked(rows, readers)
        body = gzip.compress(b'{"events":[' + b",".join(payloads) + b"]}", 1)
        if session is not None:
            session.request("POST", "/", body, {"Content-Encoding": "gzip"})
            session.getresponse().read()
        conn.execute("DELETE FROM events WHERE seq <= ?", (rows[-1][0],))
        sent += len(rows)
    return sent / (time.perf_counter() - started)


def unpackers(conn: sqlite3.Connection) -> dict[int, Any] | None:
    """A spool's dictionaries as decompressors, None for a spool whose payloads are stored as
    sent (a release before packing)."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if "dictionaries" not in tables:
        return None
    import zstandard

    return {
        number: zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data))
        for number, data in conn.execute("SELECT id, data FROM dictionaries")
    }


def unpacked(rows: list[Any], readers: dict[int, Any]) -> list[bytes]:
    """The wire bytes of packed rows, as little work as any packed spool must do: decompress,
    and put the id back in front."""
    out = []
    for _, payload, key, packing in rows:
        if not packing:
            out.append(payload)
            continue
        h = key.hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        out.append(b'{"id":"%s",%s' % (text.encode(), readers[packing].decompress(payload)))
    return out


class Copies:
    """Fresh copies of one filled spool: each drain starts from the same events."""

    def __init__(self, root: Path, events: int) -> None:
        self.root, self.events = root, events
        self.template = root / "template.db"
        fill(self.template, events)

    def fresh(self, name: str) -> Path:
        path = self.root / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.template, path)
        return path

    def drain(self, url: str) -> Callable[[Path], float]:
        """Events/s of one sqreen flush() of a copy to ``url``, which must deliver them all."""

        def rate(path: Path) -> float:
            spooler = sqreen.Spooler(path=path, url=url, heartbeat_delay=3600)
            started = time.perf_counter()
            result = spooler.flush()
            rate = result.delivered / (time.perf_counter() - started)
            assert result.pending == 0 and result.delivered == self.events, result
            spooler.close()
            return rate

        return rate


def percentiles(samples: list[int]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] / 1e3, ordered[int(len(ordered) * 0.99)] / 1e3


def track_latency(spooler: sqreen.Spooler, n: int) -> list[int]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        spooler.track("bench.during", OPTIONS)
        samples.append(time.perf_counter_ns() - start)
    return samples


def arguments(events: int, rounds: int) -> argparse.Namespace:
    """--events and --rounds, with these defaults, and the bench's first docstring line."""
    parser = argparse.ArgumentParser(
        description=(sys.modules["__main__"].__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=events)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()


def serve_sink() -> tuple[ThreadingHTTPServer, str]:
    """The collector that only reads each body and answers 200, and its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1/events"


def main() -> None:
    args = arguments(100_000, 5)
    server, url = serve_sink()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copies = Copies(root, args.events)  # once: each run drains a fresh copy of it
        fresh = copies.fresh
        contenders: dict[str, Callable[[Path], float]] = {
            "ceiling without HTTP": lambda path: ceiling(path, None),
            "ceiling": lambda path: ceiling(path, server.server_address[1]),
            "sqreen flush()": copies.drain(url),
        }
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):  # interleaved, so that drift hits every contender alike
            for name, run in contenders.items():
                runs[name].append(run(fresh(name)))
        results = {name: max(rates) for name, rates in runs.items()}

        path = fresh("latency")
        spooler = sqreen.Spooler(path=root / "tracking.db")
        idle = track_latency(spooler, 20_000)
        drainer = sqreen.Spooler(path=path, url=url, heartbeat_delay=3600)
        thread = threading.Thread(target=drainer.flush)
        thread.start()
        busy = track_latency(spooler, 20_000)
        thread.join()
        spooler.close()
        drainer.close()

    print(
        f"drain benchmark, {args.events} events, best of {args.rounds} interleaved rounds, "
        f"sqreen-spool {sqreen.__version__}"
    )
    for label, rate in results.items():
        print(f"{label:24} {rate:9.0f} events/s")
    # This shared machine's speed drifts by a quarter between runs: the ratio within each round,
    # where the two ran back to back, says more than a ratio of bests taken from different rounds.
    ratios = sorted(a / b for a, b in zip(runs["sqreen flush()"], runs["ceiling"], strict=True))
    print(
        f"{'flush / ceiling':24} {statistics.median(ratios):9.2f}   (target >= 0.7; median of the "
        f"rounds' ratios, {ratios[0]:.2f} to {ratios[-1]:.2f}; of the bests: "
        f"{results['sqreen flush()'] / results['ceiling']:.2f})"
    )
    (p50_idle, p99_idle), (p50_busy, p99_busy) = percentiles(idle), percentiles(busy)
    print(
        f"track() p50/p99 µs without a drain {p50_idle:.1f} / {p99_idle:.1f}, "
        f"during a drain {p50_busy:.1f} / {p99_busy:.1f}"
    )


if __name__ == "__main__":
    main()
