"""Playbooks and the event store, in one run:

    make bench                       # or: .venv/bin/python bench/playbooks.py [--replay N]

- collector ingest: ``sqreen-spool collect --store S --playbooks P`` (20 playbooks) and
  ``collect --store S`` next to ``collect --out F`` (the floor: parse, check, append), all real
  subprocesses, batches of 1,000 wire events POSTed in interleaved rounds; events/s and the
  ratios (target >= 0.7);
- the engine alone: ``Engine.process`` over the same events on a scratch SQLite file;
- replay: ``sqreen-spool playbook replay`` over N events (JSON lines, default one million).

The events: a mix of names, a tenth of them failed logins and invalid coupons over a few
thousand IPs and users, so that the playbooks count, decide and stop.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from sqreen.automation import state
from sqreen.automation.engine import Engine
from sqreen.automation.playbooks import parse

SCRIPT = str(Path(sys.executable).with_name("sqreen-spool"))
NAMES = ["page.view", "cart.add", "search", "order.paid", "profile.update"]


def playbooks(n: int) -> str:
    """``n`` playbooks over the events' names and dimensions."""
    kinds = [
        ('event = "sqreen.auth_track"\nwhere = { "properties.success" = false }\n'
         'group_by = ["user", "ip"]\nthreshold = 5\nwithin = "10m"'),
        ('event = "sqreen.auth_track"\nwhere = { "properties.success" = false }\n'
         'group_by = "ip"\ndistinct = "user"\nthreshold = 20\nwithin = "10m"'),
        ('event = "coupon.invalid"\nwhere = { "properties.amount" = { ge = 10 } }\n'
         'group_by = "ip"\nthreshold = 10\nwithin = "5m"'),
        ('event = ["search", "page.view"]\nwhere = { "request.path" = { matches = "^/admin" } }\n'
         'group_by = "ip"\nthreshold = 50\nwithin = "1m"'),
    ]  # fmt: skip
    tables = [
        f'[[playbook]]\nname = "p{i}"\n{kinds[i % len(kinds)]}\naction = "block_ip"\n'
        f'duration = "{10 + i}m"\n'
        for i in range(n)
    ]
    return "\n".join(tables)


def events(n: int, seed: int = 1, start: float | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = time.time() if start is None else start
    found = []
    for i in range(n):
        ip = f"203.0.{rng.randrange(16)}.{rng.randrange(250)}"
        event: dict[str, Any] = {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": datetime.fromtimestamp(base + i * 0.001, UTC).isoformat(),
            "request": {"ip": ip, "path": rng.choice(["/", "/admin/x", "/checkout"])},
            "user_identifiers": {"email": f"user{rng.randrange(3000)}@example.com"},
        }
        roll = rng.random()
        if roll < 0.01:  # a few attackers, stuffing credentials
            event["request"]["ip"] = f"198.51.100.{rng.randrange(5)}"
            event |= {"name": "sqreen.auth_track", "properties": {"success": False}}
        elif roll < 0.05:
            event |= {"name": "sqreen.auth_track", "properties": {"success": False}}
        elif roll < 0.1:
            event |= {"name": "coupon.invalid", "properties": {"amount": rng.randrange(30)}}
        else:
            event |= {"name": rng.choice(NAMES), "properties": {"i": i}}
        found.append(event)
    return found


def body(chunk: list[dict[str, Any]]) -> bytes:
    sent_at = datetime.now(UTC).isoformat()
    return orjson.dumps({"batch_id": str(uuid.uuid4()), "sent_at": sent_at, "events": chunk})


def collector(*options: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [SCRIPT, "collect", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().split()[-1]
    # It prints every event: read on, or a full pipe stalls it.
    import threading

    threading.Thread(target=lambda: process.stdout and process.stdout.read(), daemon=True).start()
    return process, url


def ingest(directory: Path, n: int, rounds: int) -> dict[str, float]:
    book = directory / "p.toml"
    book.write_text(playbooks(20))
    contenders = {
        "collect --out": collector("--out", str(directory / "out.jsonl")),
        "collect --store": collector("--store", str(directory / "alone.db")),
        "collect --store --playbooks (20)": collector(
            "--store", str(directory / "s.db"), "--playbooks", str(book)
        ),
    }
    batches = [body(chunk) for chunk in _chunks(events(n * rounds), 1000)]
    spent = dict.fromkeys(contenders, 0.0)
    try:
        with httpx.Client(timeout=60) as client:
            for round_ in range(rounds):  # interleaved: drift hits both alike
                mine = batches[round_ * (n // 1000) : (round_ + 1) * (n // 1000)]
                for name, (_, url) in contenders.items():
                    started = time.perf_counter()
                    for content in mine:
                        assert client.post(url, content=content).status_code == 200
                    spent[name] += time.perf_counter() - started
    finally:
        for process, _ in contenders.values():
            process.terminate()
            process.wait(timeout=30)
    return {name: n * rounds / seconds for name, seconds in spent.items()}


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def engine_alone(directory: Path, n: int) -> float:
    engine = Engine(parse(playbooks(20)))
    connection = sqlite3.connect(directory / "state.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    state.create(connection)
    found = events(n, seed=2)
    started = time.perf_counter()
    for chunk in _chunks(found, 1000):
        connection.execute("BEGIN IMMEDIATE")
        engine.process(connection, chunk, time.time())
        connection.execute("COMMIT")
    return n / (time.perf_counter() - started)


def replay(directory: Path, n: int) -> float:
    book = directory / "p.toml"
    book.write_text(playbooks(20))
    lines = directory / "history.jsonl"
    with lines.open("wb") as out:
        for chunk in range(0, n, 100_000):
            size = min(100_000, n - chunk)
            start = 1_700_000_000 + chunk * 0.001
            out.write(b"".join(orjson.dumps(e) + b"\n" for e in events(size, chunk, start)))
    started = time.perf_counter()
    done = subprocess.run(
        [SCRIPT, "playbook", "replay", str(book), "--events", str(lines), "--json"],
        capture_output=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    print(f"replay: {n} events, {len(done.stdout.splitlines())} decisions, {seconds:.1f} s")
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="per round, per contender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replay", type=int, default=1_000_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sqreen-bench-") as tmp:
        directory = Path(tmp)
        rates = ingest(directory, options.events, options.rounds)
        for name, rate in rates.items():
            print(f"{name:40} {rate:10.0f} events/s")
        out, store, both = rates.values()
        print(f"{'store alone / --out':40} {store / out:10.2f}")
        print(f"{'store + 20 playbooks / --out (target >= 0.7)':40} {both / out:10.2f}")
        print(f"{'engine alone, 20 playbooks':40} {engine_alone(directory, 50_000):10.0f} events/s")
        if options.replay:
            print(f"{'replay':40} {replay(directory, options.replay):10.0f} events/s")


if __name__ == "__main__":
    main()
