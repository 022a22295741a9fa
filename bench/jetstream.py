"""Drain into NATS JetStream next to a raw nats-py loop, and over HTTP next to its ceiling.

    make bench                       # or: .venv/bin/python bench/jetstream.py [--events N]

A real ``nats-server -js`` on loopback (Debian's package, as the tests run it), a stream with
file storage. The floor publishes the spool's stored messages (the same bodies, the same
``Nats-Msg-Id`` headers) with the same number of PubAcks in flight, and nothing else: no
reading, settling or deleting of rows. Each contender gets a fresh stream (a re-published id
would only be flagged duplicate) and a fresh copy of one spool; rounds are interleaved.
Also: what one ``collect --forward`` process (one uvicorn worker) forwards into the stream,
posted to by one application's ``flush()``. Target (fleet delivery issue): ``flush()`` into
JetStream at >= 0.7x of the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drain import Copies, arguments, ceiling, serve_sink

from sqreen.delivery.jetstream import IN_FLIGHT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.nats_servers import STREAM, SUBJECT, Collector, NatsServer, add_stream, run


def fresh_stream(url: str) -> None:
    async def drop(js: Any) -> None:
        with contextlib.suppress(Exception):  # none yet
            await js.delete_stream(STREAM)

    run(url, drop)
    add_stream(url)


def raw_publish(path: Path, url: str) -> float:
    """Events/s of nats-py alone publishing the stored messages, IN_FLIGHT PubAcks at once."""
    import nats

    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT id, payload FROM events ORDER BY seq").fetchall()
    conn.close()

    async def main() -> float:
        client = await nats.connect(url)
        js = client.jetstream()
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(event_id: str, body: bytes) -> None:
            async with gate:
                await js.publish(SUBJECT, body, headers={"Nats-Msg-Id": event_id})

        started = time.perf_counter()
        await asyncio.gather(*(one(i, p) for i, p in rows))
        rate = len(rows) / (time.perf_counter() - started)
        await client.close()
        return rate

    return asyncio.run(main())


def main() -> None:
    args = arguments(20_000, 3)
    http, http_url = serve_sink()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(root).start()
        tier = Collector(server.url)  # one process, one worker
        copies = Copies(root, args.events)
        contenders: dict[str, tuple[Callable[[Path], float], bool]] = {
            f"raw nats-py, {IN_FLIGHT} in flight": (lambda p: raw_publish(p, server.url), True),
            "sqreen flush(), JetStream": (copies.drain(server.url), True),
            "flush() to collect --forward": (copies.drain(tier.url), True),
            "raw HTTP drain (ceiling)": (lambda p: ceiling(p, http.server_address[1]), False),
            "sqreen flush(), HTTP": (copies.drain(http_url), False),
        }
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        try:
            for _ in range(args.rounds):
                for name, (contender, stream) in contenders.items():
                    if stream:
                        fresh_stream(server.url)
                    runs[name].append(contender(copies.fresh(name.split(",")[0])))
        finally:
            tier.stop()
            server.stop()
    best = {name: max(rates) for name, rates in runs.items()}
    print(f"JetStream and HTTP drains, {args.events} events, best of {args.rounds} rounds")
    for name, rate in best.items():
        print(f"  {name:32} {rate:9,.0f} events/s")
    names = list(best)
    print("ratios:")
    print(f"  JetStream: flush() / raw nats-py (>= 0.7): {best[names[1]] / best[names[0]]:.2f}")
    print(f"  HTTP:      flush() / raw HTTP drain:       {best[names[4]] / best[names[3]]:.2f}")
    print(f"  one collector process forwards {best[names[2]]:,.0f} events/s into the stream")


if __name__ == "__main__":
    main()
