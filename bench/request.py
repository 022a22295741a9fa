"""What a request context adds to track(): capture, parsing, scrubbing and encoding of the
request object, per event, for a request with 10 parameters.

    make bench                       # or: .venv/bin/python bench/request.py [--calls N]

One WSGI app whose handler calls ``track()`` twice runs as it is (outside) and wrapped in
``SqreenMiddleware`` (inside), in interleaved rounds; each sample is one request, with a fresh
environ. What the context adds is inside minus outside, for:
- request: the first event and the middleware's own time (the whole per-request cost lands on
  that event: capture, build, scrub, encode);
- first: that first ``track()`` alone (it builds, scrubs and encodes the request object);
- second: a second ``track()`` in the same request (the request object is reused; the event is
  larger).

As a floor, raw sqlite3 (one INSERT + COMMIT, as in bench/track.py) of the same event, already
encoded (outside) and with the least request work any capture must do, per call (inside): the
query parsed by ``urllib.parse.parse_qsl``, the other dimensions copied from the environ (a
request id made by ``uuid4``), the request object encoded into the event. No scrubbing, no
proxy header, no validation.

Security responses: a request through the middleware to an app that does nothing, with no
action stored, and with 10,000 blocked ranges (none of them the client's): the check costs one
clock read with no action, and one bisection with any number of ranges.

And the request object's own cost: per request inside, the first ``track()`` minus the second
(building, scrubbing and encoding the request object is all that differs between them).
``--against DIR`` also runs another checkout's library (its ``spool/`` folder, loaded under
another name) in the same rounds, for a before/after of that cost:

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/request.py --against /tmp/before/spool

Target (issue 5): under 20 µs added per event (median) for a request with 10 parameters.
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from checkout import load, make_spool
from track import INSERT, SCHEMA

import sqreen
from sqreen.event import build
from sqreen.integrations.wsgi import SqreenMiddleware
from sqreen.security.action_store import add_operator_action
from sqreen.security.actions import read_action

PARAMS = {
    "q": "running shoes",
    "page": "2",
    "sort": "price",
    "color": "blue",
    "size": "42",
    "brand": "acme",
    "utm_source": "newsletter",
    "session_token": "abcdef123456",
    "password": "hunter2",
    "card": "4111 1111 1111 1111",
}
OPTIONS = {"properties": {"plan": "pro", "seats": 3}}


def environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/search",
        "QUERY_STRING": urlencode(PARAMS),
        "REMOTE_ADDR": "198.51.100.4",
        "HTTP_HOST": "shop.example",
        "wsgi.url_scheme": "https",
        "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) bench",
        "HTTP_REFERER": "https://shop.example/?q=shoes&utm_source=newsletter",
        "HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.0.0.1",
    }


def least_request(environ: dict[str, Any]) -> bytes:
    """The request object with no work past parsing the query: what any capture must do."""
    query = dict(parse_qsl(environ["QUERY_STRING"], keep_blank_values=True))
    return orjson.dumps(
        {
            "ip": environ["REMOTE_ADDR"],
            "user_agent": environ["HTTP_USER_AGENT"],
            "path": environ["PATH_INFO"],
            "verb": environ["REQUEST_METHOD"],
            "host": environ["HTTP_HOST"],
            "scheme": environ["wsgi.url_scheme"],
            "referer": environ["HTTP_REFERER"],
            "request_id": environ.get("HTTP_X_REQUEST_ID") or str(uuid.uuid4()),
            "params": {"query": query},
        }
    )


def floor(path: Path) -> Callable[[dict[str, Any] | None], None]:
    """Raw sqlite3: insert and commit the event, with the least request object when given an
    environ."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    conn.commit()
    event = build("search", OPTIONS)
    head = event.payload[:-1] + b',"request":'

    def call(environ: dict[str, Any] | None) -> None:
        payload = event.payload if environ is None else head + least_request(environ) + b"}"
        conn.execute(INSERT, (event.id, event.name, time.time(), payload))
        conn.commit()

    return call


def tracking_app(library: Any, timed: dict[str, float]) -> Callable[..., Any]:
    """A WSGI handler calling ``library.track()`` twice, timing each call into ``timed``."""

    def handler(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        for row in ("first", "second"):
            started = time.perf_counter()
            library.track("search", OPTIONS)
            timed[row] = time.perf_counter() - started
        return [b""]

    return handler


def object_builder(library: Any, spooler: Any) -> Callable[[dict[str, Any]], float]:
    """A request through ``library``'s WSGI middleware to an app that only builds the request
    object (as the first ``track()`` of a request does) and returns the seconds it took: the
    cost of building it, without SQLite's commit and its background work."""
    # Where the request context lives: sqreen.request.context, or an older checkout's .context.
    name = library.__name__
    context = sys.modules.get(f"{name}.request.context") or sys.modules[f"{name}.context"]
    middleware = sys.modules[f"{library.__name__}.integrations.wsgi"].SqreenMiddleware
    builder = spooler._requests
    with_flag = "collect_body" in inspect.signature(context.RequestContext.request_json).parameters
    took: list[float] = [0.0]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        request = context.current()
        started = time.perf_counter()
        request.request_json(builder, False) if with_flag else request.request_json(builder)
        took[0] = time.perf_counter() - started
        return [b""]

    wrapped = middleware(app)

    def run(environ: dict[str, Any]) -> float:
        wrapped(environ, lambda *a: None)
        return took[0]

    return run


def screening(folder: Path) -> dict[str, Callable[[dict[str, Any]], float]]:
    """Requests through the middleware to an app that does nothing: with no security response
    stored (``none``), and with 10 or 10,000 blocked /24 ranges that the client is not in."""
    now = time.time()
    rng = random.Random(5)
    spoolers = {"none": sqreen.Spooler(path=folder / "none.db", ip_header="X-Forwarded-For")}
    for count in (10, 10_000):
        ranges = {f"{ipaddress.IPv4Address(rng.getrandbits(32) & ~0xFF)}/24" for _ in range(count)}
        ranges.discard("203.0.113.0/24")  # the bench's client is never blocked
        blocked = sqreen.Spooler(path=folder / f"ranges-{count}.db", ip_header="X-Forwarded-For")
        parameters = {"ip_cidr": sorted(ranges)}
        document = {"action": "block_ip", "action_id": "many", "parameters": parameters}
        add_operator_action(blocked._store, read_action(document, now, "operator"), now)
        spoolers[f"{count:,} ranges"] = blocked
    app = SqreenMiddleware(lambda environ, start_response: [b""])

    def through(spooler: sqreen.Spooler) -> Callable[[dict[str, Any]], float]:
        def run(environ: dict[str, Any]) -> float:
            sqreen.default._default = spooler  # the middleware enforces the default's actions
            started = time.perf_counter()
            app(environ, lambda *a: None)
            return time.perf_counter() - started

        return run

    return {name: through(spooler) for name, spooler in spoolers.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--against", help="another checkout's spool/ folder, run alongside")
    args = parser.parse_args()
    rows = ("request", "first", "second")
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        spooler = sqreen.configure(path=Path(tmp) / "spool.db", ip_header="X-Forwarded-For")
        raw = floor(Path(tmp) / "floor.db")
        timed: dict[str, float] = {}
        handler = tracking_app(sqreen, timed)
        apps = {"outside": handler, "inside": SqreenMiddleware(handler)}
        objects = {"ours": object_builder(sqreen, spooler)}
        screens = screening(Path(tmp))
        if args.against:
            baseline = load(args.against)
            make_spool(args.against, Path(tmp) / "baseline.db")  # with its own migrations
            theirs = baseline.configure(path=Path(tmp) / "baseline.db", ip_header="X-Forwarded-For")
            middleware = sys.modules["baseline.integrations.wsgi"].SqreenMiddleware
            apps["baseline"] = middleware(tracking_app(baseline, timed))
            objects["baseline"] = object_builder(baseline, theirs)
        per_round = args.calls // args.rounds
        for _ in range(args.rounds):
            for where, app in apps.items():
                for _ in range(per_round):
                    request = environ()
                    started = time.perf_counter()
                    app(request, lambda *a: None)
                    # The first event carries the request's whole cost: middleware included.
                    samples["request", where].append(
                        time.perf_counter() - started - timed["second"]
                    )
                    samples["first", where].append(timed["first"])
                    samples["second", where].append(timed["second"])
                    samples["build", where].append(timed["first"] - timed["second"])
            for where, build_object in objects.items():
                for _ in range(per_round):
                    samples["object", where].append(build_object(environ()))
            for where, screen in screens.items():
                for _ in range(per_round):
                    samples["screen", where].append(screen(environ()))
            sqreen.default._default = spooler
            for where, request in (("outside", None), ("inside", environ())):
                for _ in range(per_round):
                    started = time.perf_counter()
                    raw(request)
                    samples["floor", where].append(time.perf_counter() - started)
        spooler.close()
    p50 = {key: statistics.median(values) * 1e6 for key, values in samples.items()}
    added = {row: p50[row, "inside"] - p50[row, "outside"] for row in (*rows, "floor")}
    print(
        f"A WSGI app's handler calling track() twice, without and with SqreenMiddleware (the "
        f"request has {len(PARAMS)} parameters): p50 of {args.calls:,} calls each, in µs"
    )
    print(f"  {'':34} {'outside':>8} {'inside':>8} {'added':>8}")
    labels = {
        "request": "request (first event + middleware)",
        "first": "first track()",
        "second": "second track()",
        "floor": "floor (least request work)",
    }
    for row in (*rows, "floor"):
        print(
            f"  {labels[row]:34} {p50[row, 'outside']:8.1f} {p50[row, 'inside']:8.1f} "
            f"{added[row]:+8.1f}"
        )
    print(f"  added by a request: ours / the floor's {added['request'] / added['floor']:.2f}")
    print(
        f"  the request object: {p50['object', 'ours']:.1f} µs to build alone "
        f"({p50['build', 'inside']:.1f} µs between the first track() and the second)"
    )
    none, few, many = (p50["screen", k] for k in ("none", "10 ranges", "10,000 ranges"))
    print(
        f"  a request through the middleware, app doing nothing: no action {none:.1f} µs; "
        f"10 blocked ranges {few:.1f} µs; 10,000 ranges {many:.1f} µs (x{many / few:.2f} of 10)"
    )
    if args.against:
        before, after = p50["object", "baseline"], p50["object", "ours"]
        added_before = p50["request", "baseline"] - p50["request", "outside"]
        print(f"  with {args.against} (the same rounds):")
        ratio = after / before
        print(f"    the request object: {before:.1f} µs; this checkout / that one {ratio:.2f}")
        print(
            f"    added by a request: {added_before:.1f} µs; this checkout / that one "
            f"{added['request'] / added_before:.2f} (commits included: more bytes per event "
            "mean more WAL and checkpoint work)"
        )


if __name__ == "__main__":
    main()
