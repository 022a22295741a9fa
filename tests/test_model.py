"""A model-based test of the spool (Hypothesis's RuleBasedStateMachine): random sequences of
tracks (valid and invalid), flushes against a collector told what to answer next, requeues,
purges and crashes (a spooler abandoned without close(), the file reopened by a new one), on a
real SQLite file. After every step, every acknowledged event is exactly one of pending,
delivered (at the collector), rejected or purged; nothing is delivered that was never
acknowledged; the spool's own stats agree; SQLite's integrity check passes.

``make test`` runs a few hundred steps; ``MODEL_STEPS=100000 pytest tests/test_model.py`` runs
more (see docs/storage.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from typer.testing import CliRunner

import sqreen
from sqreen import clock
from sqreen.cli.app import app
from sqreen.delivery.sink import MemorySink, Reply
from sqreen.integrations.wsgi import SqreenMiddleware
from sqreen.ops.admin import purge, requeue
from sqreen.ops.selection import Selection
from sqreen.security.action_store import add_operator_action, clear_actions
from sqreen.security.actions import read_action
from sqreen.storage.bound import ceiling, enforce_size
from sqreen.storage.files import WAL, size_of
from sqreen.storage.packing import keep_packed, readable
from sqreen.storage.prune import drop_old
from sqreen.storage.schema import DELIVERED, PENDING, REJECTED

STEPS = int(os.environ.get("MODEL_STEPS", "800"))
MODEL_BOUND = 1 << 30  # the spoolers' max_bytes (see SpoolModel._open)
HITS: Counter[str] = Counter()  # the rules run, for the coverage check and the report
ANSWERS = (
    *("accept", "reject_some", "server_error", "too_large", "bad_request", "no_response"),
    *("rate_limited", "timeout", "unreadable"),
)


class Collector:
    """What the test's collector answers next, and what it accepted (ids, deduplicated)."""

    def __init__(self) -> None:
        self.mode = "accept"
        self.accepted: set[str] = set()
        self.refused: set[str] = set()
        self.posts = 0

    def answer(self, batch: dict[str, Any]) -> Reply:
        self.posts += 1
        ids = [event["id"] for event in batch["events"]]
        if self.mode == "server_error":
            return Reply(503, "unavailable")
        if self.mode == "too_large":
            return Reply(413, "too large")
        if self.mode == "bad_request":
            return Reply(400, "bad request")
        if self.mode == "no_response":
            return Reply(None, "connection refused")
        if self.mode == "rate_limited":
            return Reply(429, "slow down", retry_after=0.01)
        if self.mode == "timeout":
            return Reply(None, "timeout: no whole answer within 5 s")
        if self.mode == "unreadable":  # an answer too large or undecodable: not read whole
            return Reply(None, "the answer is over 1048576 bytes: not read whole", unread=True)
        refused = {i: "refused" for i in ids if self.mode == "reject_some" and int(i[-1], 16) < 5}
        self.refused |= set(refused)
        self.accepted |= set(ids) - set(refused)
        return Reply(200, rejected=refused)


class SpoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        clock.reset()  # each sequence from the real time (prune_later moved it in the last)
        self.directory = tempfile.TemporaryDirectory(prefix="sqreen-model-")
        self.path = Path(self.directory.name) / "spool.db"
        self.collector = Collector()
        self.sink = MemorySink(self.collector.answer)
        self.acked: set[str] = set()
        self.purged: set[str] = set()
        self.aged: set[str] = set()  # pending events the age limit dropped (counted)
        self.expired: set[str] = set()  # settled ones past their keeping time (not counted)
        self.sized: set[str] = set()  # pending events the size bound dropped (counted)
        self.dropped_age = self.dropped_size = 0
        self.logins: set[str] = set()  # the security events among the acknowledged
        self.kills = 0
        self.counter = 0
        self.abandoned: list[sqreen.Spooler] = []
        self._open()

    def _open(self) -> None:
        # The tracker has nothing to deliver to (no delivery thread racing the model); the
        # shipper never tracks: its flushes are the rules'. Delivered rows are kept, to be
        # told apart from purged ones.
        # A bound far above what the steps write: the cut is the shrink_bound rule's, modelled,
        # never a background thread's (real SIGKILLed children write tens of megabytes).
        common = {"path": self.path, "keep_delivered": 86400 * 30, "heartbeat_delay": 3600,
                  "max_bytes": MODEL_BOUND}  # fmt: skip
        self.tracker = sqreen.Spooler(**common)
        self.tracker.start()  # the file exists from the first step
        self.shipper = sqreen.Spooler(sink=self.sink, retry_attempts=1, **common)

    def connect(self) -> contextlib.closing[sqlite3.Connection]:
        """A connection of the test's own, reading ids and payloads as sent."""
        return contextlib.closing(readable(sqlite3.connect(self.path)))

    def rows(self) -> dict[str, int]:
        with self.connect() as connection:
            return dict(connection.execute("SELECT sent_id(id), status FROM events").fetchall())

    @rule(n=st.integers(1, 30))
    def track(self, n: int) -> None:
        HITS["track"] += 1
        for _ in range(n):
            self.counter += 1
            assert self.tracker.track("model", {"properties": {"n": self.counter}})
        self.acked |= set(self.rows()) - self.acked - self.purged

    @rule(n=st.integers(1, 5))
    def track_logins(self, n: int) -> None:
        """Failed logins: security events, which the size bound drops last."""
        HITS["track_logins"] += 1
        for _ in range(n):
            assert self.tracker.auth_track(False, email="mallory@example.com")
        new = set(self.rows()) - self.acked - self.purged
        self.logins |= new
        self.acked |= new

    @rule()
    def pack(self) -> None:
        """The maintenance thread's packing: a dictionary trained once 20 events are in the
        spool (500 outside this test), the rows stored as sent repacked."""
        HITS["pack"] += 1
        keep_packed(self.tracker._store, train_after=20)
        if self.tracker._store.packer.ready:
            HITS["pack:packing"] += 1  # the spool has its dictionary

    @rule(bad=st.sampled_from([{"properties": {"x": {1, 2}}}, {"properties": "no"}, 3]))
    def track_invalid(self, bad: Any) -> None:
        HITS["track_invalid"] += 1
        before = self.rows()
        with pytest.raises(sqreen.InvalidEvent):
            self.tracker.track("model", bad)
        assert self.rows() == before  # nothing changed

    def flush(self, mode: str) -> None:
        HITS["flush"] += 1
        HITS[f"flush:{mode}"] += 1
        self.collector.mode = mode
        self.shipper.flush(timeout=30)

    @rule()
    def requeue_rejected(self) -> None:
        HITS["requeue_rejected"] += 1
        requeue(self.shipper._store, Selection.of("rejected"))

    @rule(status=st.sampled_from(["pending", "rejected"]))
    def purge_some(self, status: str) -> None:
        HITS["purge_some"] += 1
        code = {"pending": PENDING, "rejected": REJECTED}[status]
        before = {i for i, s in self.rows().items() if s == code}
        purge(self.shipper._store, Selection.of(status))
        self.purged |= before

    @rule(n=st.integers(1, 10))
    def fork_and_track(self, n: int) -> None:
        HITS["fork_and_track"] += 1
        # A child of this process tracks through the tracker it inherited (its connections are
        # reopened in the child), and exits without closing it.
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read)
            code = 0
            try:
                for i in range(n):
                    code |= not self.tracker.track("forked", {"properties": {"i": i}})
            except BaseException:
                code = 1
            os.write(write, bytes([code]))
            os._exit(0)
        os.close(write)
        status = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
        assert status == b"\x00", "the child's track() failed"
        self.acked |= set(self.rows()) - self.acked - self.purged

    @rule(hours=st.sampled_from([1, 12, 24 * 2, 24 * 4]))
    def prune_later(self, hours: int) -> None:
        """The clock moves forward, then the heartbeat's prune runs: pending events older than
        max_age are dropped (and counted), settled ones past their keeping time deleted."""
        HITS["prune_later"] += 1
        # The rows before the clock moves: a background thread of an abandoned spooler may
        # prune them too, by the same rule, as soon as it has moved.
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT sent_id(id), status, enqueued_at, settled_at FROM events"
            )
            before = {i: (s, enqueued, settled) for i, s, enqueued, settled in rows}
        clock.advance(hours * 3600)
        now, settings = clock.now(), self.tracker.settings
        drop_old(self.tracker._store, settings)
        left = self.rows()
        for event_id, (status, enqueued, settled) in before.items():
            if status == PENDING:
                should_go = enqueued < now - settings.max_age
            else:
                keep = settings.keep_delivered if status == DELIVERED else settings.max_age
                should_go = settled is not None and settled < now - keep
            assert (event_id not in left) == should_go, (event_id, status)
            if should_go:
                (self.aged if status == PENDING else self.expired).add(event_id)
                self.dropped_age += status == PENDING

    @rule(share=st.sampled_from([0.3, 0.6, 0.9]))
    def shrink_bound(self, share: float) -> None:
        """The size bound lowered below the files: settled rows go first, then the oldest
        pending ones, each of those counted as dropped by size."""
        HITS["shrink_bound"] += 1
        store = self.tracker._store
        with self.connect() as connection:
            # The cut's order: analytics, oldest first, then security events (logins).
            query = (
                f"SELECT sent_id(id) FROM events WHERE status = {PENDING} ORDER BY security, seq"
            )
            order = [i for (i,) in connection.execute(query)]
        settled = {i for i, status in self.rows().items() if status != PENDING}
        limit = max(4096, int(store.file_bytes() * share))
        dropped = enforce_size(store, limit)
        # Below a few hundred KiB the schema's own pages are the floor: the bound holds above it.
        # A bound lowered for this call only cuts the data; the WAL is under the spool's own
        # (a writer killed mid-burst leaves megabytes in it).
        wal = size_of(f"{self.path}{WAL}")
        assert store.file_bytes() - wal <= max(limit, 256 * 1024), "the data stayed over the bound"
        assert store.file_bytes() <= ceiling(store.settings.max_bytes)
        left = self.rows()
        gone = [i for i in order if i not in left]
        assert gone == order[: len(gone)] and len(gone) == dropped  # the oldest, counted
        if gone:
            assert not settled & set(left)  # settled rows went first
        if set(gone) & self.logins:
            HITS["shrink_bound:logins_dropped"] += 1  # nothing else was left
        self.sized |= set(gone)
        self.dropped_size += dropped
        self.expired |= settled - set(left)

    @rule(action=st.sampled_from(["block_ip", "block_user", "clear"]))
    def operator_action(self, action: str) -> None:
        """An operator's security response, added or all cleared: the events are untouched."""
        HITS["operator_action"] += 1
        store, now = self.shipper._store, clock.now()
        if action == "clear":
            clear_actions(store)
            return
        parameters = ({"ip_cidr": ["203.0.113.0/24"]} if action == "block_ip"
                      else {"users": [{"email": "mallory@example.com"}]})  # fmt: skip
        document = {"action": action, "action_id": f"op-{now}", "parameters": parameters}
        add_operator_action(store, read_action(document, now, "operator"), now)

    @rule()
    def track_in_a_request(self) -> None:
        """identify() inside a real WSGI request, then track(): the event carries the user."""
        HITS["track_in_a_request"] += 1

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            sqreen.identify({"email": "ada@example.com"})
            assert self.tracker.track("in.request")
            start_response("200 OK", [])
            return [b""]

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.1",
                   "wsgi.input": None, "wsgi.url_scheme": "http"}  # fmt: skip
        SqreenMiddleware(app, spooler=self.tracker)(environ, lambda *args: None)
        new = set(self.rows()) - self.acked - self.purged
        assert len(new) == 1
        with self.connect() as connection:
            (payload,) = connection.execute(
                "SELECT sent_payload(id, payload, packing) FROM events WHERE sent_id(id) = ?",
                (next(iter(new)),),
            ).fetchone()
        assert b'"ada@example.com"' in payload and b'"192.0.2.1"' in payload
        self.acked |= new

    @rule()
    def inspect_agrees(self) -> None:
        """``sqreen-spool inspect --json`` says what the model says."""
        HITS["inspect_agrees"] += 1
        shown = CliRunner().invoke(app, ["--path", str(self.path), "inspect", "--json"])
        assert shown.exit_code == 0, shown.output
        summary = orjson.loads(shown.stdout)
        statuses = Counter(self.rows().values())
        assert summary["counts"]["pending"] == statuses[PENDING]
        assert summary["counts"]["rejected"] == statuses[REJECTED]
        assert summary["counts"]["delivered"] == statuses[DELIVERED]
        assert summary["dropped"]["age"] == self.dropped_age
        assert summary["dropped"]["size"] == self.dropped_size

    @precondition(lambda self: len(self.abandoned) < 5)
    @rule()
    def crash(self) -> None:
        HITS["crash"] += 1
        # The spoolers are dropped without close(): their threads and connections linger, as
        # in a process that died with its files half-used; new ones reopen the file.
        self.abandoned += [self.tracker, self.shipper]
        self._open()

    @invariant()
    def every_acknowledged_event_is_somewhere_once(self) -> None:
        rows = self.rows()
        pending = {i for i, s in rows.items() if s == PENDING}
        rejected = {i for i, s in rows.items() if s == REJECTED}
        delivered = {i for i, s in rows.items() if s == DELIVERED}
        gone = self.purged | self.aged | self.expired | self.sized
        assert pending | rejected | delivered | gone == self.acked
        assert not (gone & set(rows))
        assert delivered == self.collector.accepted - gone  # nothing delivered unseen
        assert self.collector.accepted <= self.acked  # nothing delivered never acknowledged
        stats = self.shipper.stats()
        assert (stats.pending, stats.rejected) == (len(pending), len(rejected))
        assert stats.dropped["age"] == self.dropped_age  # the counter equals the model's
        security = {"age": len(self.aged & self.logins), "size": len(self.sized & self.logins)}
        assert {k: stats.dropped_security[k] for k in security} == security

    @invariant()
    def integrity(self) -> None:
        with self.connect() as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def teardown(self) -> None:
        for spooler in (*self.abandoned, self.tracker, self.shipper):
            spooler.close(timeout=1)
        self.directory.cleanup()


KILLED_CHILD = """
import sys, sqreen
from sqreen import clock
clock.advance(float(sys.argv[3]))
spooler = sqreen.Spooler(path=sys.argv[1], heartbeat_delay=3600, keep_delivered=86400 * 30,
                         max_bytes=int(sys.argv[4]))
i = 0
while True:
    i += 1
    if spooler.track(sys.argv[2], {"properties": {"i": i}}):
        print(i, flush=True)
"""


class SpoolModelWithKills(SpoolModel):
    """The model, plus a real child process tracking into the spool, SIGKILLed mid-call."""

    @rule(after=st.floats(0.05, 0.4))
    def sigkill_a_tracking_child(self, after: float) -> None:
        HITS["sigkill_a_tracking_child"] += 1
        self.kills += 1
        name = f"killed.{self.kills}"  # this child's events only
        # The child reads this process's clock, moved or not: on the real clock, its events
        # would be days old to the spoolers here, and dropped by age behind the model's back.
        ahead = str(clock.now() - time.time())
        child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(self.path), name, ahead,
                                  str(MODEL_BOUND)],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(after)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        with self.connect() as connection:
            found = connection.execute(
                "SELECT sent_id(id), sent_payload(id, payload, packing) FROM events WHERE name = ?",
                (name,),
            )
            stored = {event_id: orjson.loads(p)["properties"]["i"] for event_id, p in found}
        acknowledged = {int(line) for line in out.split()}
        assert acknowledged <= set(stored.values()), "an acknowledged event was lost"
        # Stored but not acknowledged (killed between the commit and the print): kept too.
        self.acked |= set(stored)


def _flush_rule(mode: str) -> Any:
    def flush(self: SpoolModel) -> None:
        self.flush(mode)

    return rule()(flush)


# A rule per answer (not one rule drawing the answer): each kind of answer is as likely as any
# other rule, so that a few hundred steps try them all.
for _mode in ANSWERS:
    setattr(SpoolModel, f"flush_{_mode}", _flush_rule(_mode))


def test_the_spool_against_its_model() -> None:
    HITS.clear()
    run_state_machine_as_test(
        SpoolModel,
        settings=settings(
            max_examples=max(1, STEPS // 25),
            stateful_step_count=25,
            deadline=None,
            # make test's few hundred steps are the same each run (their coverage is checked);
            # make model's are new each time.
            derandomize=STEPS <= 1000,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    rules = {"track", "track_invalid", "flush", "requeue_rejected", "purge_some", "crash",
             "fork_and_track", "prune_later", "shrink_bound", "track_in_a_request",
             "inspect_agrees", "operator_action", "track_logins", "pack"}  # fmt: skip
    assert set(HITS) >= rules | {f"flush:{mode}" for mode in ANSWERS}, HITS  # all were run
    print(f"{sum(v for k, v in HITS.items() if ':' not in k)} steps: {dict(sorted(HITS.items()))}")


@pytest.mark.skipif(
    STEPS <= 1000,
    reason="run by make model (real processes killed at real moments: not the same steps each "
    "run); make test runs the in-process crash",
)
def test_the_spool_against_its_model_with_real_kills() -> None:
    HITS.clear()
    run_state_machine_as_test(
        SpoolModelWithKills,
        settings=settings(max_examples=8, stateful_step_count=25, deadline=None,
                          derandomize=True, suppress_health_check=list(HealthCheck)),
    )  # fmt: skip
    assert HITS["sigkill_a_tracking_child"] > 0, HITS
