"""The project's story in under a minute: `make demo`.

1. `sqreen-spool collect` starts a local reference collector;
2. track() records the Sqreen docs' examples; a caller's mistake raises sqreen.InvalidEvent;
3. an application tracks events (its flusher delivering them as it goes) and is killed with
   SIGKILL halfway;
4. `sqreen-spool inspect` shows the pending events that survived the crash;
5. `sqreen-spool flush` delivers them;
6. the collector has received every event the application acknowledged, exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson

import sqreen

SCRIPT = str(Path(sys.executable).with_name("sqreen-spool"))


def app(path: str, url: str) -> None:
    """The 'application': track events forever, printing each acknowledged event's number.

    Its flusher delivers at its first heartbeat, then once a minute or per 10,000 events: the
    kill comes before the next delivery, as a crash would.
    """
    spooler = sqreen.Spooler(path=path, url=url, batch_size=10_000)
    for n in range(1, 10**9):
        options = {"properties": {"n": n}, "user_identifiers": {"email": "ada@example.com"}}
        if spooler.track("demo.checkout", options):
            print(n, flush=True)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def cli(*args: str) -> int:
    """Run the installed `sqreen-spool` and show what it prints."""
    print(f"$ sqreen-spool {' '.join(args)}", flush=True)
    return subprocess.run([SCRIPT, *args], check=False).returncode


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo" / "spool.db"
        received = Path(tmp) / "received.jsonl"
        os.environ["SQREEN_SPOOL_PATH"] = str(path)

        step("1. a local collector: sqreen-spool collect")
        log = Path(tmp) / "collect.log"
        with log.open("w") as collector_output:  # it prints every event: keep them aside
            collector = subprocess.Popen(
                [SCRIPT, "collect", "--port", "0", "--out", str(received)], stdout=collector_output
            )
        while not log.read_text().endswith("\n"):
            time.sleep(0.05)
        url = log.read_text().split()[-1]
        print(f"   listening on {url}")

        step(f"2. track() into {path}")
        spooler = sqreen.Spooler(path=path, url=url)
        event_date = datetime(2018, 3, 15, 14, 42, 0, 79043)
        spooler.track("user.signup", {"properties": {"foo": "bar"}, "timestamp": event_date})
        spooler.track("user.login", {"user_identifiers": {"email": "ada@example.com"}})
        for name, options in [
            (123, None),
            ("e", {"propreties": {"foo": "bar"}}),
            ("e", {"properties": {f"p{i}": i for i in range(17)}}),
            ("e", {"properties": {"tags": {"a", "b"}}}),
        ]:
            try:
                spooler.track(name, options)  # type: ignore[arg-type]
            except sqreen.InvalidEvent as exc:
                print(f"   track({name!r}, {options!r:.30}...) raised InvalidEvent: {exc}")
        spooler.close()  # delivers what it tracked, within SQREEN_SHUTDOWN_TIMEOUT
        modes = f"{path.stat().st_mode & 0o777:o}, directory {path.parent.stat().st_mode & 0o777:o}"
        print(f"   spool file mode {modes}")

        step("3. an application tracks events; SIGKILL before its next delivery")
        child = subprocess.Popen(
            [sys.executable, __file__, "--app", str(path), url], stdout=subprocess.PIPE
        )
        time.sleep(1.5)
        os.kill(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        acknowledged = {int(line) for line in output.split()}
        print(f"   the app acknowledged {len(acknowledged)} events before it was killed")

        step("4. what survived the crash")
        cli("inspect")
        cli("inspect", "events", "--limit", "3")

        step("5. deliver the rest by hand")
        cli("--url", url, "flush")
        cli("inspect", "--json")

        step("6. what the collector received")
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=10)
        printed = log.read_text().splitlines()
        print("   the collector printed, among others:\n     " + "\n     ".join(printed[1:3]))
        print(f"   and at exit: {printed[-1]}")
        events = [orjson.loads(line) for line in received.read_bytes().splitlines()]
        numbers = [e["properties"]["n"] for e in events if e["name"] == "demo.checkout"]
        missing = acknowledged - set(numbers)
        twice = len(numbers) - len(set(numbers))
        print(
            f"   {len(numbers)} checkout events stored by the collector; of the {len(acknowledged)}"
            f" acknowledged: {len(missing)} missing, {twice} stored twice"
        )
        if missing or twice:
            sys.exit("FAILED: the collector did not receive every acknowledged event exactly once")
        print("   every acknowledged event arrived exactly once")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        app(sys.argv[2], sys.argv[3])
    else:
        main()
