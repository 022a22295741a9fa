"""The project's story in under a minute: `make demo`.

1. `sqreen-spool collect` starts a local reference collector;
2. track() records the Sqreen docs' examples; what the agent tolerated is warned about (and
   refused by a strict spooler); a caller's real mistake raises sqreen.InvalidEvent;
3. the collector goes down; an application tracks events (its flusher failing to deliver
   them) and is killed with SIGKILL;
4. `sqreen-spool inspect` shows the pending events that survived the crash;
5. the collector comes back, keeping events in a store and running a playbook file (a custom
   event, ``coupon.invalid``: block the user after 3 in 5 minutes); `sqreen-spool flush`
   delivers the events;
6. the collector has received every event the application acknowledged, exactly once;
7. a checkout app under a real threaded WSGI server, with the default 60 s heartbeat: after the
   third invalid coupon, that user's next request is answered 403 within a second or two (the
   collector's answer named coupon.invalid urgent), and `sqreen-spool actions` shows the block;
8. `sqreen-spool playbook replay` runs the store's history through a draft with a lower
   threshold: what it would have decided, and what its blocks would have stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import orjson

import sqreen
from sqreen.integrations.wsgi import SqreenMiddleware

PLAYBOOK = """
allow_private = true  # the demo runs on loopback, which a playbook otherwise never blocks

[[playbook]]
name = "coupon brute force"
event = "coupon.invalid"
where = { "request.path" = { matches = "^/checkout" } }
group_by = "user"
threshold = 3
within = "5m"
action = "block_user"
duration = "1h"
"""

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


def checkout_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A tiny WSGI shop: POST /checkout?user=...&coupon=..., GET /account?user=..."""
    query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    sqreen.identify({"email": query["user"]})  # raises UserBlocked for a blocked user
    if environ["PATH_INFO"] == "/checkout":
        ok = query.get("coupon") == "WELCOME10"
        if not ok:
            sqreen.track("coupon.invalid", {"properties": {"coupon": query.get("coupon", "")}})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"coupon applied" if ok else b"invalid coupon"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"your account"]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def start_collector(
    received: Path, log: Path, *options: str
) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("w") as collector_output:  # it prints every event: keep them aside
        collector = subprocess.Popen(
            [SCRIPT, "collect", "--port", "0", "--out", str(received), *options],
            stdout=collector_output,
        )
    while not log.read_text().endswith("\n"):
        time.sleep(0.05)
    return collector, log.read_text().split()[-1]


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
        collector, url = start_collector(received, log)
        print(f"   listening on {url}")

        step(f"2. track() into {path}")
        logging.basicConfig(format="   (warning) %(message)s")
        spooler = sqreen.Spooler(path=path, url=url)
        event_date = datetime(2018, 3, 15, 14, 42, 0, 79043)
        spooler.track("user.signup", {"properties": {"foo": "bar"}, "timestamp": event_date})
        spooler.auth_track(False, user_id=42)  # an int identifier, as the agent's docs write it
        print("   the agent tolerated these: recorded with a warning (a strict spooler raises)")
        spooler.track("e", {"propreties": {"foo": "bar"}})
        spooler.track("e", {"properties": {f"p{i}": i for i in range(17)}})
        strict = sqreen.Spooler(path=Path(tmp) / "strict.db", strict=True)
        for spool, name, options in [
            (strict, "e", {"propreties": {"foo": "bar"}}),
            (spooler, 123, None),
            (spooler, "e", {"properties": {"tags": {"a", "b"}}}),
        ]:
            try:
                spool.track(name, options)  # type: ignore[arg-type]
            except sqreen.InvalidEvent as exc:
                mode = "strict " if spool is strict else ""
                print(f"   {mode}track({name!r}, {options!r:.30}...) raised InvalidEvent: {exc}")
        strict.close()
        spooler.close()  # delivers what it tracked, within SQREEN_SHUTDOWN_TIMEOUT
        modes = f"{path.stat().st_mode & 0o777:o}, directory {path.parent.stat().st_mode & 0o777:o}"
        print(f"   spool file mode {modes}")

        step("3. the collector goes down; an application tracks events; SIGKILL")
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=10)
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

        step("5. the collector is back, with a store and a playbook; deliver the rest by hand")
        playbooks, store = Path(tmp) / "playbooks.toml", Path(tmp) / "events.db"
        playbooks.write_text(PLAYBOOK)
        print(PLAYBOOK.strip().replace("\n", "\n   | ").join(("   | ", "")))
        options = ("--store", str(store), "--playbooks", str(playbooks))
        collector, url = start_collector(received, log, *options)
        print(f"   $ sqreen-spool collect --store events.db --playbooks playbooks.toml: {url}")
        cli("--url", url, "flush")
        cli("inspect", "--json")

        step("6. what the collector received")
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

        step("7. a custom event drives a security response (default 60 s heartbeat)")
        sqreen.configure(path=path, url=url)
        server = make_server(
            "127.0.0.1", 0, SqreenMiddleware(checkout_app), handler_class=QuietHandler
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        site = f"http://127.0.0.1:{server.server_address[1]}"
        with httpx.Client(base_url=site) as http:
            for coupon in ("FREE100", "SUMMER99", "BLACKFRIDAY"):
                answer = http.post(f"/checkout?user=mallory@example.com&coupon={coupon}")
                print(f"   POST /checkout mallory {coupon}: {answer.status_code} {answer.text}")
            third = time.monotonic()
            while (answer := http.get("/account?user=mallory@example.com")).status_code != 403:
                if time.monotonic() - third > 10:
                    sys.exit("FAILED: the user was not blocked")
                time.sleep(0.05)
            print(
                f"   GET /account as mallory, {time.monotonic() - third:.2f} s later: "
                f"{answer.status_code} (blocked)"
            )
            other = http.get("/account?user=bo@example.com")
            print(f"   GET /account as bo@example.com: {other.status_code} {other.text}")
        server.shutdown()
        cli("actions")

        step("8. replay the store through a draft: what would a threshold of 2 have done?")
        draft = Path(tmp) / "draft.toml"
        draft.write_text(PLAYBOOK.replace("threshold = 3", "threshold = 2"))
        cli("playbook", "replay", str(draft), "--events", str(store))
        sqreen.default.current_spooler().close()
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=10)
        print(f"   the collector at exit: {log.read_text().splitlines()[-1]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        app(sys.argv[2], sys.argv[3])
    else:
        main()
