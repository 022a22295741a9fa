"""The spool's main promise, end to end, in a few seconds: `make demo`.

1. track() the Sqreen docs' examples into a fresh spool;
2. a caller's mistake raises sqreen.InvalidEvent naming the problem;
3. an application tracking in a loop is killed with SIGKILL, and every event that track()
   acknowledged before the kill is in the spool, intact;
4. a local collector is started and the spool is flushed to it: it receives every acknowledged
   event exactly once, and the spool is empty.
"""

from __future__ import annotations

import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import orjson

import sqreen


def app(path: str) -> None:
    """The 'application': track events forever, printing each acknowledged event's id."""
    spooler = sqreen.Spooler(path=path)
    for n in range(1, 10**9):
        options = {"properties": {"n": n}, "user_identifiers": {"email": "ada@example.com"}}
        if spooler.track("demo.checkout", options):
            print(n, flush=True)


class Collector(BaseHTTPRequestHandler):
    """A minimal local collector: decodes each batch and keeps its events."""

    protocol_version = "HTTP/1.1"
    events: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        Collector.events += orjson.loads(body)["events"]
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def stored(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as conn:
        return [orjson.loads(p) for (p,) in conn.execute("SELECT payload FROM events ORDER BY seq")]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo" / "spool.db"
        print(f"== 1. track() into {path}")
        spooler = sqreen.Spooler(path=path)
        event_date = datetime(2018, 3, 15, 14, 42, 0, 79043)
        spooler.track("user.signup", {"properties": {"foo": "bar"}, "timestamp": event_date})
        spooler.track("user.login", {"user_identifiers": {"email": "ada@example.com"}})
        spooler.close()
        for event in stored(path):
            print("  ", orjson.dumps(event).decode())
        mode = path.stat().st_mode & 0o777
        print(f"   spool file mode {mode:o}, directory mode {path.parent.stat().st_mode & 0o777:o}")

        print("\n== 2. caller mistakes raise sqreen.InvalidEvent")
        for name, options in [
            (123, None),
            ("e", {"propreties": {"foo": "bar"}}),
            ("e", {"properties": {f"p{i}": i for i in range(17)}}),
            ("e", {"properties": {"tags": {"a", "b"}}}),
        ]:
            try:
                sqreen.Spooler(path=path).track(name, options)  # type: ignore[arg-type]
            except sqreen.InvalidEvent as exc:
                print(f"   track({name!r}, {options!r:.40}...) -> {exc}")

        print("\n== 3. SIGKILL an application mid-stream")
        child = subprocess.Popen(
            [sys.executable, __file__, "--app", str(path)], stdout=subprocess.PIPE
        )
        time.sleep(2.0)
        os.kill(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        acknowledged = {int(line) for line in output.decode().split("\n")[:-1]}
        in_spool = {
            e["properties"]["n"]  # type: ignore[index]
            for e in stored(path)
            if e["name"] == "demo.checkout"
        }
        lost = acknowledged - in_spool
        print(f"   the app acknowledged {len(acknowledged)} events before SIGKILL")
        print(f"   the spool holds {len(in_spool & acknowledged)} of them; lost: {len(lost)}")
        extra = len(in_spool - acknowledged)
        if extra:
            print(f"   ({extra} more committed but were killed before the app could report them)")
        with sqlite3.connect(path) as conn:
            print(
                f"   PRAGMA integrity_check: {conn.execute('PRAGMA integrity_check').fetchone()[0]}"
            )
        if lost:
            sys.exit(f"LOST {sorted(lost)[:10]}")

        print("\n== 4. flush the spool to a local collector")
        server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/events"
        print(f"   collector listening on {url}")
        spooler = sqreen.Spooler(path=path, url=url)
        result = spooler.flush(timeout=30)
        spooler.close()
        print(f"   flush: {result}")
        received = [
            e["properties"]["n"]
            for e in Collector.events  # type: ignore[index]
            if e["name"] == "demo.checkout"
        ]
        print(
            f"   the collector received {len(received)} checkout events, "
            f"{len(set(received))} distinct; every acknowledged one: "
            f"{acknowledged <= set(received)}; left in the spool: {len(stored(path))}"
        )
        server.shutdown()
        if not acknowledged <= set(received) or len(received) != len(set(received)):
            sys.exit("the collector did not receive every acknowledged event exactly once")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        app(sys.argv[2])
    else:
        main()
