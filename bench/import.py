"""Import throughput: JSON lines into a spool, next to the floor, in one run.

    make bench                       # or: .venv/bin/python bench/import.py [--events N]

- floor: plain sqlite3 inserting the same already-encoded events, 2,000 per transaction, in the
  spool's own mode (WAL, synchronous=NORMAL): the storage cost alone;
- library: ``sqreen.ops.importer.import_lines`` (parse, validate, encode, batched commits,
  checkpoints), the work behind ``sqreen-spool import``;
- command: the installed ``sqreen-spool import FILE`` end to end, interpreter start and schema
  creation included.

Target (issue 4): over 50,000 events/s into the spool.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from sqreen.config import Settings
from sqreen.ops.importer import BATCH_SIZE, import_lines, parse_line
from sqreen.storage.store import Store


def write_lines(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for i in range(n):
            out.write(
                orjson.dumps(
                    {
                        "name": "order.paid",
                        "properties": {"order": i, "total": 12.5, "currency": "EUR"},
                        "user_identifiers": {"email": f"user{i % 1000}@example.com"},
                        "timestamp": 1_500_000_000 + i,
                    }
                )
                + b"\n"
            )


def floor(lines: Path, spool: Path) -> float:
    events = [parse_line(line) for line in lines.read_bytes().splitlines()]
    conn = sqlite3.connect(spool, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, id, name, enqueued_at, payload)")
    started = time.perf_counter()
    for start in range(0, len(events), BATCH_SIZE):
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        conn.executemany(
            "INSERT INTO events (id, name, enqueued_at, payload) VALUES (?, ?, ?, ?)",
            [(e.id, e.name, now, e.payload) for e in events[start : start + BATCH_SIZE]],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(events) / elapsed


def library(lines: Path, spool: Path) -> float:
    store = Store(Settings.resolve({"path": spool}))
    store.migrate()  # schema creation is not what is measured here
    started = time.perf_counter()
    with lines.open("rb") as source:
        result = import_lines(store, source, lambda n, why: None)
    elapsed = time.perf_counter() - started
    store.close()
    return result.valid / elapsed


def command(lines: Path, spool: Path, n: int) -> float:
    script = str(Path(sys.executable).with_name("sqreen-spool"))
    started = time.perf_counter()
    subprocess.run(
        [script, "--path", str(spool), "import", str(lines)], check=True, stdout=subprocess.DEVNULL
    )
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "events.jsonl"
        write_lines(lines, args.events)
        print(f"import of {args.events:,} JSON lines, best of {args.rounds} rounds")
        runners = {
            "floor": lambda spool: floor(lines, spool),
            "library": lambda spool: library(lines, spool),
            "command": lambda spool: command(lines, spool, args.events),
        }
        results: dict[str, list[float]] = {name: [] for name in runners}
        for round_number in range(args.rounds):  # interleaved: drift hits all three alike
            for name, run in runners.items():
                results[name].append(run(Path(tmp) / f"{name}{round_number}.db"))
        best_floor = max(results["floor"])
        for name, rates in results.items():
            best = max(rates)
            print(f"  {name:<8} {best:>10,.0f} events/s   {best / best_floor:5.2f}x the floor")


if __name__ == "__main__":
    main()
