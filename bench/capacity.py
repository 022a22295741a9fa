"""How many hours of outage a bound holds: bytes on disk per event, on a realistic mix.

    make bench                       # or: .venv/bin/python bench/capacity.py [--events N]
    git worktree add /tmp/before <commit>
    .venv/bin/python bench/capacity.py --against /tmp/before/spool

The mix: a dozen event names (the library's logins and signups among them), properties of
several types, 5,000 users and 2,000 client IPs, two events in three tracked inside a WSGI
request through ``SqreenMiddleware`` (so they carry the request object the middleware adds),
one in three outside any request. The same seeded sequence is tracked into a fresh spool with
no collector (an outage), then the WAL is checkpointed and the pages in use are counted:
bytes per event = pages in use x page size / events. ``--against`` tracks the same sequence
with another checkout's library in a child process (its ``spool/`` folder imported as
``sqreen``), in the same run.

From it, the hours of outage a bound holds at ``--rate`` events a second before the first drop:
the size bound starts cutting once the pages in use reach SIZE_TRIGGER of ``max_bytes``.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import orjson
from checkout import run

MiB = 1024 * 1024
GiB = 1024 * MiB
NAMES = (
    "page.view", "search", "cart.add", "order.paid", "coupon.invalid", "invite.sent",
    "password_reset.requested", "profile.updated", "file.uploaded", "api.call",
)  # fmt: skip
PATHS = ("/", "/search", "/products/{n}", "/cart", "/checkout", "/account", "/api/v1/items")
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148",
    "python-requests/2.32.3",
)


def mix(events: int, seed: int = 7) -> list[dict[str, Any]]:
    """The calls to make, as plain data (the same in every process)."""
    rng = random.Random(seed)
    calls = []
    for n in range(events):
        user = rng.randrange(5000)
        ip = f"{rng.choice((198, 203, 192))}.{rng.randrange(256)}.{rng.randrange(8)}.{user % 250}"
        kind = rng.random()
        if kind < 0.08:
            call: dict[str, Any] = {"auth": rng.random() < 0.7, "email": f"user{user}@example.com"}
        elif kind < 0.1:
            call = {"signup": f"user{user}@example.com"}
        else:
            name = rng.choice(NAMES)
            properties = {
                "amount": round(rng.uniform(1, 500), 2),
                "items": rng.randrange(1, 9),
                "plan": rng.choice(("free", "pro", "team")),
                "first": rng.random() < 0.2,
                "tags": rng.sample(["new", "sale", "gift", "bulk", "promo"], 2),
            }
            if name == "search":
                properties["query"] = rng.choice(("shoes", "red dress", "usb-c cable", "tent"))
            call = {"name": name, "properties": properties,
                    "user": {"email": f"user{user}@example.com"}}  # fmt: skip
        if n % 3:
            path = rng.choice(PATHS).format(n=rng.randrange(10_000))
            call["request"] = {
                "REQUEST_METHOD": rng.choice(("GET", "GET", "POST")),
                "PATH_INFO": path,
                "QUERY_STRING": f"page={rng.randrange(9)}&sort=price" if rng.random() < 0.3 else "",
                "REMOTE_ADDR": ip,
                "HTTP_HOST": "shop.example",
                "HTTP_USER_AGENT": rng.choice(AGENTS),
                "wsgi.url_scheme": "https",
            }
        calls.append(call)
    return calls


def track_all(path: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Track the calls into a fresh spool at ``path`` with the ``sqreen`` importable here."""
    import sqreen
    from sqreen.integrations.wsgi import SqreenMiddleware

    spooler = sqreen.Spooler(path=path, max_bytes=64 * GiB, heartbeat_delay=3600)

    def one(call: dict[str, Any]) -> None:
        if "auth" in call:
            assert spooler.auth_track(call["auth"], email=call["email"])
        elif "signup" in call:
            assert spooler.signup_track(email=call["signup"])
        else:
            options = {"properties": call["properties"], "user_identifiers": call["user"]}
            assert spooler.track(call["name"], options)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        one(environ["bench.call"])
        start_response("200 OK", [])
        return [b""]

    middleware = SqreenMiddleware(app, spooler=spooler)
    for call in calls:
        if "request" in call:
            environ = {**call["request"], "wsgi.input": None, "bench.call": call}
            middleware(environ, lambda *args: None)
        else:
            one(call)
    spooler._store.checkpoint(truncate=True)
    spooler.close()
    with sqlite3.connect(path) as connection:
        page_size, pages, free = (
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
        (count,) = connection.execute("SELECT count(*) FROM events").fetchone()
    return {"events": count, "bytes_in_use": (pages - free) * page_size,
            "file_bytes": os.path.getsize(path)}  # fmt: skip


def measure(against: str | None, calls: list[dict[str, Any]], work: Path, tag: str) -> Any:
    path = str(work / f"{tag}.db")
    if against is None:
        return track_all(path, calls)
    # Another checkout: imported as sqreen, in a child process (see bench/checkout.py).
    calls_file = work / "calls.json"
    calls_file.write_bytes(orjson.dumps(calls))
    code = (
        "import sys, orjson, capacity;"
        "print(orjson.dumps(capacity.track_all(sys.argv[1], orjson.loads(open(sys.argv[2], 'rb')"
        ".read()))).decode())"
    )
    out = run(against, code, path, str(calls_file), path=(str(Path(__file__).parent),))
    return orjson.loads(out.splitlines()[-1])


def hours(bytes_per_event: float, max_bytes: int, rate: float) -> float:
    from sqreen.storage.bound import SIZE_TRIGGER

    return max_bytes * SIZE_TRIGGER / bytes_per_event / rate / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=50.0, help="events a second (the figure)")
    parser.add_argument("--against", help="another checkout's spool/ folder, for a before/after")
    args = parser.parse_args()
    calls = mix(args.events)
    with tempfile.TemporaryDirectory(prefix="sqreen-capacity-") as directory:
        work = Path(directory)
        runs = {"this": measure(None, calls, work, "this")}
        if args.against:
            runs["against"] = measure(args.against, calls, work, "against")
    print(f"{args.events:,} events of the mix (bench/capacity.py); at {args.rate:g} events/s:")
    print(f"{'':>8} {'B/event':>8} {'64 MiB holds':>14} {'1 GiB holds':>13}")
    for tag, figures in runs.items():
        per = figures["bytes_in_use"] / figures["events"]
        print(f"{tag:>8} {per:8.0f} {hours(per, 64 * MiB, args.rate):12.2f} h "
              f"{hours(per, GiB, args.rate):11.1f} h")  # fmt: skip
    if "against" in runs:
        this, before = (r["bytes_in_use"] / r["events"] for r in (runs["this"], runs["against"]))
        print(
            f"bytes per event: {this / before:.2f}x the other checkout's "
            f"({before / this:.2f}x as many events in the same bound)"
        )


if __name__ == "__main__":
    main()
