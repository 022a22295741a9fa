"""What a request context adds to track(): capture, parsing, scrubbing and encoding of the
request object, per event, for a request with 10 parameters.

    make bench                       # or: .venv/bin/python bench/request.py [--calls N]

Each sample is one call, timed alone, in interleaved rounds:
- outside: ``track()`` with no request;
- request: a WSGI request through ``SqreenMiddleware`` whose handler calls ``track()`` once
  (the whole per-request cost lands on that event: capture, build, scrub, encode);
- first: that first ``track()`` alone (it builds, scrubs and encodes the request object);
- second: a second ``track()`` in the same request (the request object is reused);
- wrapper: the middleware's own time around the application (capture, context).

Target (issue 5): under 20 µs added per event (median) for a request with 10 parameters.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqreen
from sqreen.integrations.wsgi import SqreenMiddleware

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
        "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) bench",
        "HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.0.0.1",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spooler = sqreen.configure(path=Path(tmp) / "spool.db", ip_header="X-Forwarded-For")
        samples: dict[str, list[float]] = {
            "outside": [],
            "request": [],
            "first": [],
            "second": [],
            "wrapper": [],
        }
        timed: dict[str, float] = {}

        def handler(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            started = time.perf_counter()
            sqreen.track("search", OPTIONS)
            timed["request"] = time.perf_counter() - started
            started = time.perf_counter()
            sqreen.track("search", OPTIONS)
            timed["second"] = time.perf_counter() - started
            return [b""]

        app = SqreenMiddleware(handler)
        per_round = args.calls // args.rounds
        for _ in range(args.rounds):
            for _ in range(per_round):
                started = time.perf_counter()
                sqreen.track("search", OPTIONS)
                samples["outside"].append(time.perf_counter() - started)
            for _ in range(per_round):
                request = environ()
                started = time.perf_counter()
                app(request, lambda *a: None)
                whole = time.perf_counter() - started
                # The first event carries the request's whole cost: middleware included.
                samples["request"].append(whole - timed["second"])
                samples["first"].append(timed["request"])
                samples["second"].append(timed["second"])
                samples["wrapper"].append(whole - timed["request"] - timed["second"])
        spooler.close()
    base = statistics.median(samples["outside"])
    print(f"track() with a request context, {args.calls:,} calls each, {len(PARAMS)} parameters")
    for name, values in samples.items():
        median = statistics.median(values)
        p99 = statistics.quantiles(values, n=100)[98]
        added = f"{(median - base) * 1e6:+7.1f} µs" if name not in ("outside", "wrapper") else ""
        print(f"  {name:<8} p50 {median * 1e6:7.1f} µs  p99 {p99 * 1e6:8.1f} µs  added {added}")


if __name__ == "__main__":
    main()
