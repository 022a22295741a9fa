"""The spool's main promise, end to end, in a few seconds: `make demo`.

1. track() the Sqreen docs' examples into a fresh spool;
2. a caller's mistake raises sqreen.InvalidEvent naming the problem;
3. an application tracking in a loop is killed with SIGKILL, and every event that track()
   acknowledged before the kill is in the spool, intact.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson

import sqreen


def app(path: str) -> None:
    """The 'application': track events forever, printing each acknowledged event's id."""
    spooler = sqreen.Spooler(path=path)
    for n in range(1, 10**9):
        options = {"properties": {"n": n}, "user_identifiers": {"email": "ada@example.com"}}
        if spooler.track("demo.checkout", options):
            print(n, flush=True)


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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        app(sys.argv[2])
    else:
        main()
