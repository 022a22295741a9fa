"""Security events first: an outage that fills the spool drops analytics and keeps the logins;
delivery sends security events first; the counters say which class was dropped."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import sqreen
from sqreen.cli.app import app
from sqreen.delivery.sink import MemorySink, Reply
from sqreen.priority import Classes
from sqreen.storage.bound import ceiling, enforce_size
from sqreen.storage.files import file_bytes

from .conftest import counters
from .test_bound import MiB, Sampler, refusing


def security_flags(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        return dict(connection.execute("SELECT name, max(security) FROM events GROUP BY name"))


def pending_by_name(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        found = connection.execute("SELECT name, count(*) FROM events WHERE status = 0 GROUP BY 1")
        return dict(found.fetchall())


def test_the_class_comes_from_the_name(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path, security_events="coupon.*, invite.sent")
    for name in ("coupon.invalid", "invite.sent", "invite.accepted", "page.view"):
        assert spooler.track(name)
    assert spooler.auth_track(False, email="mallory@example.com")
    assert spooler.signup_track(email="ada@example.com")
    spooler.close()
    assert security_flags(spool_path) == {
        "coupon.invalid": 1, "invite.sent": 1, "invite.accepted": 0, "page.view": 0,
        "sqreen.auth_track": 1, "sqreen.signup_track": 1,
    }  # fmt: skip


def test_the_collector_s_urgent_names_are_security_events() -> None:
    classes = Classes(["reset.*"])
    assert not classes.security("coupon.invalid")
    assert classes.security("coupon.invalid", frozenset({"coupon.invalid"}))  # a playbook's
    assert not classes.security("coupon.invalid", frozenset({"other"}))  # the list changed
    assert classes.security("reset.requested") and classes.security("sq.action.block_ip")


def test_an_outage_keeps_every_login(spool_path: Path) -> None:
    """A flood of analytics and a trickle of failed logins into a 1 MiB spool whose collector
    refuses every connection: the bound holds at every sample, analytics are dropped oldest
    first, and every login is still there."""
    logins = 0
    with refusing() as url, Sampler(spool_path) as sampler:
        spooler = sqreen.Spooler(path=spool_path, url=url, max_bytes=MiB, heartbeat_delay=0.2)
        for i in range(12_000):
            # Random text: packing cannot shrink it, so the burst is several times the bound.
            properties = {"path": f"/products/{i}", "text": os.urandom(150).hex(), "i": i}
            assert spooler.track("page.view", {"properties": properties})
            if i % 100 == 0:
                logins += spooler.auth_track(False, email=f"user{i}@example.com")
        spooler.close()
    assert sampler.samples > 10 and sampler.largest <= ceiling(MiB)
    counts = counters(spool_path)
    assert counts["dropped.size"] > 4000  # the analytics took the cut
    assert counts.get("security_dropped.size", 0) == 0
    assert pending_by_name(spool_path)["sqreen.auth_track"] == logins == 120
    # The oldest analytics went first: the ones left are the newest.
    with sqlite3.connect(spool_path) as connection:
        (oldest,) = connection.execute(
            "SELECT min(seq) FROM events WHERE name = 'page.view' AND status = 0"
        ).fetchone()
        (newer,) = connection.execute(
            "SELECT count(*) FROM events WHERE name = 'page.view' AND seq > ?", (oldest,)
        ).fetchone()
        (all_after,) = connection.execute(
            "SELECT count(*) FROM events WHERE name = 'page.view' AND status = 0"
        ).fetchone()
    assert newer == all_after - 1


def test_security_events_go_only_when_nothing_else_is_left(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    for i in range(400):
        assert spooler.auth_track(False, email=f"user{i}@example.com")
    for i in range(200):
        assert spooler.track("page.view", {"properties": {"text": "x" * 500, "i": i}})
    store = spooler._store
    store.checkpoint(truncate=True)  # the data, not the WAL, is what the cut is measured on
    dropped = enforce_size(store, int(file_bytes(spool_path) * 0.6))
    left = pending_by_name(spool_path)
    assert "page.view" not in left and 0 < left["sqreen.auth_track"] < 400
    counts = counters(spool_path)
    assert dropped == counts["dropped.size"] == 200 + counts["security_dropped.size"]
    assert spooler.stats().dropped_security["size"] == counts["security_dropped.size"] > 0
    spooler.close()
    shown = CliRunner().invoke(app, ["--path", str(spool_path), "inspect", "--json"])
    assert orjson.loads(shown.stdout)["dropped_security"]["size"] == counts["security_dropped.size"]


def test_delivery_sends_security_events_first(spool_path: Path) -> None:
    batches: list[list[str]] = []

    def answer(batch: dict[str, Any]) -> Reply:
        batches.append([event["name"] for event in batch["events"]])
        return Reply(200)

    with sqreen.Spooler(path=spool_path) as tracker:  # nothing to deliver to
        for i in range(30):
            assert tracker.track("page.view", {"properties": {"i": i}})
        assert tracker.auth_track(False, email="mallory@example.com")
        assert tracker.track("page.view")
        assert tracker.auth_track(False, email="eve@example.com")
    shipper = sqreen.Spooler(path=spool_path, sink=MemorySink(answer), batch_size=10)
    while shipper.flush().pending:
        pass
    shipper.close()
    assert batches[0] == ["sqreen.auth_track", "sqreen.auth_track"]
    assert sum(map(len, batches)) == 33 and all(n == "page.view" for b in batches[1:] for n in b)


@pytest.mark.parametrize("bad", ["", ","])
def test_an_empty_setting_means_the_built_in_names_only(spool_path: Path, bad: str) -> None:
    with sqreen.Spooler(path=spool_path, security_events=bad) as spooler:
        assert spooler.track("page.view")
    assert security_flags(spool_path) == {"page.view": 0}
