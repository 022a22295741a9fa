"""Delivery to a real collector on loopback: every response class and what it leads to."""

from __future__ import annotations

import logging
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import sqreen

from . import collector as c
from .conftest import counters, rows

FAST = {"retry_attempts": 3, "http_timeout": 2.0, "heartbeat_delay": 3600}


def make(spool_path: Path, collector: Any, **settings: Any) -> sqreen.Spooler:
    return sqreen.Spooler(path=spool_path, url=collector.url, **(FAST | settings))


def track_many(spooler: sqreen.Spooler, n: int, name: str = "e") -> list[str]:
    """Track ``n`` events into ``spooler``'s file through a spooler without a collector, so
    that only the test's explicit flushes deliver (no background heartbeat in the way)."""
    writer = sqreen.Spooler(path=spooler.path)
    for i in range(n):
        assert writer.track(name, {"properties": {"i": i}})
    writer.close()
    return [r["id"] for r in rows(Path(spooler.path), f"name = '{name}'")]


def test_accepted_batches_are_delivered_once_and_removed(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector, token="s3cret-token")
    ids = track_many(spooler, 2500)
    result = spooler.flush()
    assert (result.delivered, result.failed, result.pending) == (2500, 0, 0)
    assert [e["id"] for e in collector.accepted_events()] == ids
    assert [len(r.batch["events"]) for r in collector.requests] == [1000, 1000, 500]
    first = collector.requests[0]
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Content-Encoding"] == "gzip"
    assert first.headers["Authorization"] == "Bearer s3cret-token"
    assert first.headers["Idempotency-Key"] == first.batch["batch_id"]
    assert first.headers["User-Agent"] == f"sqreen-spool/{sqreen.__version__}"
    assert datetime.fromisoformat(first.batch["sent_at"]).tzinfo is not None
    assert "dropped" not in first.batch
    assert rows(spool_path) == []
    spooler.close()


def test_small_batches_are_not_compressed(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector)
    writer = sqreen.Spooler(path=spool_path)
    writer.track("one", {"properties": {"foo": "bar"}, "user_identifiers": {"id": "7"}})
    writer.close()
    spooler.flush()
    (request,) = collector.requests
    assert "Content-Encoding" not in request.headers
    (event,) = request.batch["events"]
    assert set(event) == {"id", "name", "timestamp", "properties", "user_identifiers"}
    spooler.close()


def test_unreachable_collector_keeps_events_with_backoff_on_the_rows(
    spool_path: Path, collector: Any
) -> None:
    spooler = make(spool_path, collector, retry_attempts=2)
    track_many(spooler, 10)
    collector.stop()
    before = time.time()
    result = spooler.flush()
    assert (result.delivered, result.failed, result.pending) == (0, 10, 10)
    for row in rows(spool_path):
        assert row["attempts"] == 1 and row["status"] == 0
        assert row["next_attempt_at"] >= before + 3  # BACKOFF_BASE with jitter
        assert "ConnectError" in row["last_error"]
        assert row["lease_owner"] is None
    assert spooler.health().failures == {"collector_unavailable": 1}
    collector.start()
    assert spooler.flush().delivered == 10  # an explicit flush does not wait for the backoff
    spooler.close()


def test_backoff_survives_a_restart(spool_path: Path, collector: Any) -> None:
    first = make(spool_path, collector, retry_attempts=1)
    track_many(first, 5)
    collector.respond_with(c.status(500))
    assert first.flush().failed == 5
    first.close()
    second = make(spool_path, collector)
    result = second._upkeep.flush(None, ignore_backoff=False)  # what heartbeats and exit do
    assert (result.delivered, result.pending) == (0, 5)
    assert len(collector.requests) == 1
    second.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "failure",
    [c.status(500), c.status(502), c.status(503), c.status(429), c.status(408), c.reset()],
    ids=["500", "502", "503", "429", "408", "reset"],
)
def test_transient_failures_are_retried_with_the_same_batch_id(
    spool_path: Path, collector: Any, failure: c.Behaviour
) -> None:
    spooler = make(spool_path, collector)
    ids = track_many(spooler, 20)
    collector.respond_with(failure, failure)
    assert spooler.flush().delivered == 20
    assert len(collector.requests) == 3
    assert len({r.batch["batch_id"] for r in collector.requests}) == 1
    assert [e["id"] for e in collector.accepted_events()] == ids
    spooler.close()


@pytest.mark.slow
def test_retry_after_is_honoured(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector)
    track_many(spooler, 3)
    collector.respond_with(c.status(503, **{"Retry-After": "1"}))
    started = time.monotonic()
    assert spooler.flush().delivered == 3
    assert time.monotonic() - started >= 0.95
    spooler.close()


def test_retry_after_beyond_the_lease_is_stored_on_the_rows(
    spool_path: Path, collector: Any
) -> None:
    spooler = make(spool_path, collector, lease=2.0)
    track_many(spooler, 3)
    collector.respond_with(c.status(429, **{"Retry-After": "120"}))
    before = time.time()
    assert spooler.flush().failed == 3
    assert len(collector.requests) == 1  # no waiting two minutes inside one flush
    assert all(r["next_attempt_at"] >= before + 119 for r in rows(spool_path))
    spooler.close()


def test_too_large_batches_are_split(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector)
    ids = track_many(spooler, 100)
    collector.default = c.larger_than(30)
    assert spooler.flush().delivered == 100
    assert sorted(e["id"] for e in collector.accepted_events()) == sorted(ids)
    assert max(len(r.batch["events"]) for r in collector.requests if r.answer.status == 200) <= 30
    spooler.close()


def test_bad_request_bisects_to_the_rejected_events(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector)
    ids = track_many(spooler, 64)
    bad = {ids[5], ids[40]}
    collector.default = c.bad_ids(bad, code=400)
    result = spooler.flush()
    assert (result.delivered, result.rejected, result.pending) == (62, 2, 0)
    assert sorted(e["id"] for e in collector.accepted_events()) == sorted(set(ids) - bad)
    rejected = rows(spool_path, "status = 2")
    assert {r["id"] for r in rejected} == bad
    assert all("HTTP 400" in r["last_error"] for r in rejected)
    assert counters(spool_path)["dropped.rejected"] == 2
    spooler.close()


def test_per_event_rejections_in_a_success_body(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector)
    ids = track_many(spooler, 10)
    collector.respond_with(c.accept(rejected=[ids[3]], reason="schema mismatch"))
    result = spooler.flush()
    assert (result.delivered, result.rejected) == (9, 1)
    (row,) = rows(spool_path, "status = 2")
    assert (row["id"], row["last_error"]) == (ids[3], "schema mismatch")
    spooler.close()


@pytest.mark.parametrize("code", [401, 403, 404])
def test_configuration_errors_drop_nothing(
    spool_path: Path, collector: Any, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    spooler = make(spool_path, collector, token="never-in-logs")
    track_many(spooler, 5)
    collector.default = c.status(code)
    with caplog.at_level(logging.ERROR, logger="sqreen.spool"):
        result = spooler.flush()
    assert (result.delivered, result.rejected, result.failed) == (0, 0, 5)
    assert len(collector.requests) == 1  # not retried within the flush
    assert all(r["status"] == 0 and r["attempts"] == 1 for r in rows(spool_path))
    assert f"HTTP {code}" in caplog.text
    assert "never-in-logs" not in caplog.text
    assert spooler.health().failures == {"collector_config": 1}
    spooler.close()


@pytest.mark.slow
def test_a_hanging_collector_times_out(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector, http_timeout=0.3, retry_attempts=2)
    track_many(spooler, 4)
    collector.default = c.hang(1.0)
    started = time.monotonic()
    result = spooler.flush()
    assert result.failed == 4 and result.pending == 4
    assert time.monotonic() - started < 1.5
    assert "timeout" in rows(spool_path)[0]["last_error"]
    spooler.close()


@pytest.mark.slow
def test_leases_keep_two_flushers_from_posting_the_same_rows(
    spool_path: Path, collector: Any
) -> None:
    writer = make(spool_path, collector, batch_size=50)
    ids = track_many(writer, 3000)
    collector.default = lambda batch: c.Answer(200, delay=0.01)  # slow enough to overlap
    flushers = [make(spool_path, collector, batch_size=50) for _ in range(4)]
    threads = [threading.Thread(target=f.flush) for f in flushers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    posted = [e["id"] for r in collector.requests for e in r.batch["events"]]
    assert len(posted) == len(set(posted)) == 3000
    assert sorted(posted) == sorted(ids)
    assert len({r.headers.get("Idempotency-Key") for r in collector.requests}) > 4
    for spooler in [writer, *flushers]:
        spooler.close()


def test_rows_leased_by_a_dead_flusher_are_retried_after_the_lease(
    spool_path: Path, collector: Any
) -> None:
    spooler = make(spool_path, collector)
    track_many(spooler, 10)
    dead = spooler._outbox.claim("dead-flusher", 5, 10**6, 0.5, time.time()).batch  # never settled
    assert len(dead) == 5
    assert spooler.flush().delivered == 5
    time.sleep(0.6)
    assert spooler.flush().delivered == 5
    assert len({e["id"] for e in collector.accepted_events()}) == 10
    spooler.close()


def test_rows_leased_by_a_process_that_died_here_are_taken_over_at_once(
    spool_path: Path, collector: Any
) -> None:
    spooler = make(spool_path, collector)
    track_many(spooler, 9)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    host = socket.gethostname()
    try:
        for owner, count in [(f"{host}:{dead.pid}:0", 3), (f"{host}:{alive.pid}:0", 3)]:
            assert len(spooler._outbox.claim(owner, count, 10**6, 300, time.time()).batch) == count
        spooler._outbox.claim(f"elsewhere:{dead.pid}:0", 3, 10**6, 300, time.time())
        # The dead process's rows go now; a live one's, and another host's, wait for the lease.
        assert spooler.flush().delivered == 3
        assert len(rows(spool_path, "lease_owner LIKE '%:' || " + str(alive.pid) + " || ':0'")) == 3
        assert len(rows(spool_path, "lease_owner LIKE 'elsewhere:%'")) == 3
    finally:
        alive.kill()
        alive.wait()
    spooler.close()


@pytest.mark.slow
def test_drops_are_reported_once_delivered(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector, max_age=0.2)
    track_many(spooler, 7, name="old")
    time.sleep(0.3)
    spooler._upkeep._maintain()  # a heartbeat: prunes the old events, then delivers (nothing left)
    assert counters(spool_path)["dropped.age"] == 7
    track_many(spooler, 2, name="new")
    collector.respond_with(c.status(500), c.status(500), c.status(500))
    assert spooler.flush().failed == 2  # the report is not counted as sent...
    assert spooler.flush().delivered == 2
    reports = [r.batch.get("dropped") for r in collector.requests]
    assert reports == [{"age": 7}] * 4  # ...until its batch is delivered
    track_many(spooler, 1, name="later")
    spooler.flush()
    assert "dropped" not in collector.requests[-1].batch
    assert counters(spool_path)["reported.age"] == 7
    spooler.close()


def test_without_url_events_stay_in_the_spool(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    with caplog.at_level(logging.WARNING, logger="sqreen.spool"):
        assert spooler.track("kept")
        assert spooler.flush().pending == 1
        assert spooler.flush().pending == 1
        spooler.close()
    assert caplog.text.count("SQREEN_URL is not set") == 1
    assert len(rows(spool_path)) == 1


def test_plain_http_is_refused_for_remote_hosts(spool_path: Path) -> None:
    with pytest.raises(sqreen.ConfigError, match="plain http to a non-loopback host"):
        sqreen.Spooler(path=spool_path, url="http://collector.example.com/v1/events")
    sqreen.Spooler(path=spool_path, url="http://collector.example.com/x", allow_insecure_http=True)
    sqreen.Spooler(path=spool_path, url="https://collector.example.com/v1/events")
    sqreen.Spooler(path=spool_path, url="http://[::1]:8000/x")
    with pytest.raises(sqreen.ConfigError, match=r"argument .url.: invalid value .ftp:"):
        sqreen.Spooler(path=spool_path, url="ftp://collector.example.com")


def test_heartbeat_delivers_in_the_background(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector, heartbeat_delay=0.3)
    ids = track_many(spooler, 20)
    spooler.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(collector.accepted_events()) < 20:
        time.sleep(0.05)
    assert sorted(e["id"] for e in collector.accepted_events()) == sorted(ids)
    spooler.close()


def test_a_full_batch_wakes_the_flusher_early(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector, batch_size=40, heartbeat_delay=3600)
    for i in range(100):
        spooler.track("e", {"properties": {"i": i}})
    # The promise: once a full batch is pending since the last delivery began, a delivery
    # starts. So at the end, fewer than a full batch waits for the (hour-long) heartbeat.
    # Where the wakes fall depends on timing (a wake counts from when the delivery it starts
    # began, which may be after event 42, say, then the next one is due at 82... or at 102).
    at_least = 100 - (40 - 1)
    deadline = time.monotonic() + 15  # a loaded machine delivers slowly, not less
    while time.monotonic() < deadline and len(collector.accepted_events()) < at_least:
        time.sleep(0.05)
    batches = [(len(r.batch["events"]), r.answer.status) for r in collector.requests]
    assert len(collector.accepted_events()) >= at_least, batches
    assert len(batches) >= 2  # the first delivery (at start) and at least one woken early
    spooler.close()


def test_ids_in_batches_are_uuids(spool_path: Path, collector: Any) -> None:
    spooler = make(spool_path, collector)
    track_many(spooler, 3)
    spooler.flush()
    for event in collector.accepted_events():
        assert uuid.UUID(event["id"]).version == 4
    spooler.close()


def test_a_wall_clock_stepped_back_holds_no_row_or_lease_for_the_step(
    spool_path: Path, collector: Any
) -> None:
    """The rows' backoff and another flusher's claim were written with a clock a day ahead
    (then stepped back): read as due and expired, not waited out for a day."""
    first = make(spool_path, collector, retry_attempts=1)
    track_many(first, 5)
    collector.respond_with(c.status(500))
    assert first.flush().failed == 5
    first.close()
    with sqlite3.connect(spool_path) as conn:
        conn.execute("UPDATE retries SET next_attempt_at = next_attempt_at + 86400")
        seqs = [seq for (seq,) in conn.execute("SELECT seq FROM events")]
        conn.execute(
            "INSERT INTO claims (owner, lo, hi, expires) VALUES (?, ?, ?, ?)",
            ("elsewhere:1:x", min(seqs), max(seqs), time.time() + 86400 + 30),
        )
    conn.close()
    second = make(spool_path, collector)
    result = second._upkeep.flush(10, ignore_backoff=False)  # what heartbeats and exit do
    assert (result.delivered, result.pending) == (5, 0)
    second.close()
