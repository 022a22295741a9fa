"""The Event Explorer's views over a store of a million events, next to the same aggregate
written as one raw query on the same store, in one run:

    make bench                       # or: .venv/bin/python bench/explorer.py [--events N]

The history: a dozen names, thousands of users and IPs, properties of several types, over a
week. Each view is timed through its function in ``sqreen.explorer.views`` (what the page's
request runs, JSON aside), the raw query with plain sqlite3; the two take turns, five rounds,
and the medians are compared. Targets: every view under a second, within 3x of its raw query.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqreen.collector.store import EventStore
from sqreen.explorer import views

NAMES = ["page.view", "search", "cart.add", "checkout.start", "order.paid", "coupon.invalid",
         "sqreen.auth_track", "sqreen.signup_track", "profile.update", "invite.sent",
         "password_reset.requested", "export.download"]  # fmt: skip
WEEK = 7 * 86400.0


def fill(path: Path, n: int, now: float) -> None:
    rng = random.Random(7)
    with EventStore(path, max_bytes=1 << 40, max_age=1e9) as store:
        for start in range(0, n, 10_000):
            chunk = []
            for i in range(start, min(n, start + 10_000)):
                at = now - WEEK + WEEK * i / n
                chunk.append({
                    "id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "name": NAMES[min(len(NAMES) - 1, int(rng.expovariate(0.35)))],
                    "timestamp": datetime.fromtimestamp(at, UTC).isoformat(),
                    "user_identifiers": {"email": f"user{rng.randrange(5000)}@example.com"},
                    "request": {"ip": f"10.{rng.randrange(8)}.{rng.randrange(256)}.9",
                                "path": rng.choice(["/", "/cart", "/checkout", "/api/x"])},
                    "properties": {"plan": rng.choice(["free", "pro", "team"]),
                                   "amount": round(rng.random() * 100, 2),
                                   "trial": rng.random() < 0.2, "seats": rng.randrange(1, 50)},
                })  # fmt: skip
            with store.transaction() as connection:
                store.add(connection, chunk, now)


def timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="sqreen-explorer-") as tmp:
        path = Path(tmp) / "events.db"
        started = time.perf_counter()
        fill(path, options.events, now)
        print(f"{options.events} events stored in {time.perf_counter() - started:.0f} s")
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        day = views.Selection(now - 86400, now, 900)
        week = views.Selection(now - WEEK, now, 3600)
        focused = views.Selection(
            now - WEEK, now, 3600, "order.paid", (("properties.plan", "pro"),)
        )
        contenders: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "trend, week, all names": (
                lambda: views.trend(connection, week),
                lambda: connection.execute(
                    "SELECT name, CAST((at - ?) / 3600 AS INTEGER), count(*) FROM events "
                    "WHERE at >= ? AND at < ? GROUP BY 1, 2", (week.start, week.start, week.end)
                ).fetchall(),
            ),
            "breakdown by ip, week": (
                lambda: views.breakdown(connection, week, "ip"),
                lambda: connection.execute(
                    "SELECT ip, count(*) FROM events WHERE at >= ? AND at < ? GROUP BY ip "
                    "ORDER BY 2 DESC LIMIT 20", (week.start, week.end)
                ).fetchall(),
            ),
            "breakdown by properties.plan, day": (
                lambda: views.breakdown(connection, day, "properties.plan"),
                lambda: connection.execute(
                    "SELECT json_extract(payload, '$.properties.plan') v, count(*) FROM events "
                    "WHERE at >= ? AND at < ? GROUP BY v ORDER BY 2 DESC LIMIT 20",
                    (day.start, day.end),
                ).fetchall(),
            ),
            "events, filtered, week (a page and the count)": (
                lambda: views.events(connection, focused),
                lambda: [connection.execute(
                    f"SELECT {columns} FROM events WHERE at >= ? AND at < ? AND name = ? AND "
                    "json_extract(payload, '$.properties.plan') = 'pro'" + tail,
                    (week.start, week.end, "order.paid"),
                ).fetchall() for columns, tail in (
                    ("seq, payload", " ORDER BY at DESC LIMIT 51"), ("count(*)", ""))],
            ),
            "dimensions": (
                lambda: views.dimensions(connection),
                lambda: connection.execute(
                    "SELECT DISTINCT t.fullkey FROM (SELECT payload FROM events ORDER BY seq "
                    "DESC LIMIT 2000) e, json_tree(e.payload) t WHERE t.type NOT IN "
                    "('object', 'array')"
                ).fetchall(),
            ),
        }  # fmt: skip
        ours: dict[str, list[float]] = {k: [] for k in contenders}
        raw: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(options.rounds):  # interleaved
            for name, (view, query) in contenders.items():
                ours[name].append(timed(view))
                raw[name].append(timed(query))
        print(f"{'view':40} {'ours ms':>9} {'raw ms':>9} {'ratio':>6}  (target: < 1000 ms, <= 3)")
        for name in contenders:
            mine, floor = statistics.median(ours[name]), statistics.median(raw[name])
            print(f"{name:40} {mine * 1000:9.0f} {floor * 1000:9.0f} {mine / floor:6.2f}")
        connection.close()


if __name__ == "__main__":
    main()
