"""Packed payloads: what the collector receives is what track() encoded, byte for byte, whoever
packed the row; rows stored as sent are repacked in bounded steps; a row that cannot be
unpacked is refused, never sent, and delivery goes on."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

import sqreen
from sqreen.delivery.sink import MemorySink, Reply
from sqreen.storage.packing import BUILT_HEAD, REPACK_STEP, TRAIN_AFTER, keep_packed, repack_step

from .conftest import counters, readable, rows


def options(i: int) -> dict[str, Any]:
    return {
        "properties": {"i": i, "plan": ["free", "pro", "team"][i % 3], "total": i * 1.5,
                       "tags": ["a", "b"][: i % 3], "nested": {"deep": i % 7 == 0}},
        "user_identifiers": {"email": f"user{i % 97}@example.com"},
    }  # fmt: skip


def collected(spool_path: Path) -> list[dict[str, Any]]:
    """Deliver the spool to a sink that keeps the events it receives, decoded."""
    received: list[dict[str, Any]] = []

    def answer(batch: dict[str, Any]) -> Reply:
        received.extend(batch["events"])
        return Reply(200)

    shipper = sqreen.Spooler(path=spool_path, sink=MemorySink(answer))
    while shipper.flush().pending:
        pass
    shipper.close()
    return received


def packing_of(spool_path: Path) -> dict[str | None, int]:
    with sqlite3.connect(spool_path) as connection:
        found = connection.execute(
            "SELECT CASE WHEN packing IS NULL THEN 'as sent' ELSE 'packed' END, count(*) "
            "FROM events GROUP BY 1"
        )
        return dict(found.fetchall())


def test_the_collector_receives_what_track_encoded(spool_path: Path) -> None:
    events = 2 * TRAIN_AFTER
    with sqreen.Spooler(path=spool_path, heartbeat_delay=3600) as spooler:
        for i in range(events):
            assert spooler.track("packed.event", options(i))
        keep_packed(spooler._store)  # the maintenance thread's: trains, repacks the first ones
    assert packing_of(spool_path) == {"packed": events}
    stored = rows(spool_path)  # as sent, through sent_payload()
    assert all(row["payload"].startswith(b'{"id":"%s",' % row["id"].encode()) for row in stored)
    with sqlite3.connect(spool_path) as connection:
        (size,) = connection.execute("SELECT avg(length(payload)) FROM events").fetchone()
    assert size < sum(len(row["payload"]) for row in stored) / events / 3  # a third or less
    received = collected(spool_path)
    assert [e["properties"] for e in received] == [options(i)["properties"] for i in range(events)]
    assert [e["id"] for e in received] == [row["id"] for row in stored]
    assert all(len(orjson.dumps(e)) > BUILT_HEAD for e in received)


CHILD = """
import sys, sqreen
from sqreen.storage.packing import keep_packed
spooler = sqreen.Spooler(path=sys.argv[1], heartbeat_delay=3600)
for i in range(int(sys.argv[2])):
    assert spooler.track("from.child", {"properties": {"i": i, "pad": "abc" * (i % 40)}})
keep_packed(spooler._store)
spooler.close()
"""


def test_rows_packed_by_another_process_are_delivered_by_this_one(spool_path: Path) -> None:
    events = TRAIN_AFTER + 300
    subprocess.run([sys.executable, "-c", CHILD, str(spool_path), str(events)], check=True)
    assert packing_of(spool_path) == {"packed": events}
    received = collected(spool_path)
    expected = [{"i": i, "pad": "abc" * (i % 40)} for i in range(events)]
    assert [e["properties"] for e in received] == expected


def test_rows_stored_as_sent_are_repacked_in_bounded_steps(spool_path: Path) -> None:
    """A spool of an older release (ids as text, payloads as sent) after its migration: each
    maintenance run repacks at most its share, one short transaction per step."""
    events = 3 * REPACK_STEP + 10
    with sqreen.Spooler(path=spool_path, heartbeat_delay=3600) as spooler:
        for i in range(events):
            assert spooler.track("old.event", options(i))
    with readable(spool_path) as connection:  # as an older release would have stored them
        connection.execute(
            "UPDATE events SET id = sent_id(id), payload = sent_payload(id, payload, packing), "
            "packing = NULL"
        )
        connection.execute("DELETE FROM dictionaries")
    before = [row["payload"] for row in rows(spool_path)]
    spooler = sqreen.Spooler(path=spool_path, heartbeat_delay=3600)  # no thread: it tracks none
    step = repack_step(spooler._store)
    assert step == REPACK_STEP  # the default bound's WAL limit allows the largest step
    assert keep_packed(spooler._store, steps=1) == step  # trained, then one step
    assert packing_of(spool_path) == {"packed": step, "as sent": events - step}
    assert keep_packed(spooler._store) == events - step  # the rest
    spooler.close()
    assert packing_of(spool_path) == {"packed": events}
    with sqlite3.connect(spool_path) as connection:
        kinds = connection.execute("SELECT DISTINCT typeof(id) FROM events").fetchall()
    assert kinds == [("blob",)]  # the ids too
    assert [row["payload"] for row in rows(spool_path)] == before  # the same bytes, as sent


def test_a_row_that_cannot_be_unpacked_is_refused_and_delivery_goes_on(spool_path: Path) -> None:
    with sqreen.Spooler(path=spool_path, heartbeat_delay=3600) as spooler:
        for i in range(TRAIN_AFTER + 10):
            assert spooler.track("packed.event", options(i))
        keep_packed(spooler._store)
    with sqlite3.connect(spool_path) as connection:  # a damaged page: two rows' bytes altered
        connection.execute("UPDATE events SET payload = x'00112233' WHERE seq IN (3, 7)")
    received = collected(spool_path)
    assert len(received) == TRAIN_AFTER + 8
    refused = rows(spool_path, "status = 2")
    assert [r["seq"] for r in refused] == [3, 7]
    assert all("does not unpack" in r["last_error"] for r in refused)
    assert counters(spool_path)["dropped.rejected"] == 2
