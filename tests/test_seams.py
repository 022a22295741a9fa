"""The seams a user (and a fast test) can plug into: any sink, a middleware's own spooler, a
spooler as a context manager."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import flask

import sqreen
from sqreen.delivery.sink import MemorySink, Reply
from sqreen.integrations import wsgi
from sqreen.security.action_store import add_operator_action
from sqreen.security.actions import read_action

from .conftest import counters, stored_events


def test_a_memory_sink_takes_the_batches_and_its_answer_decides(spool_path: Path) -> None:
    refused: set[str] = set()

    def answer(batch: dict[str, Any]) -> Reply:
        named = {e["id"]: "not this one" for e in batch["events"] if e["properties"]["i"] == 1}
        refused.update(named)
        return Reply(200, rejected=named)

    sink = MemorySink(answer)
    with sqreen.Spooler(path=spool_path, sink=sink, heartbeat_delay=3600) as spooler:
        for i in range(3):
            assert spooler.track("seam", {"properties": {"i": i}})
        deadline = time.monotonic() + 10  # the delivery thread may hold the batch meanwhile
        while spooler.flush(timeout=10).pending and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(e["properties"]["i"] for e in sink.events()) == [0, 1, 2]
    assert len(refused) == 1
    assert counters(spool_path)["dropped.rejected"] == 1
    assert stored_events(spool_path) == [] or all(  # the refused one is kept as rejected
        e["id"] in refused for e in stored_events(spool_path)
    )


def test_a_failing_sink_keeps_the_events(spool_path: Path) -> None:
    sink = MemorySink(lambda batch: Reply(None, "the queue is down"))
    with sqreen.Spooler(path=spool_path, sink=sink, retry_attempts=1) as spooler:
        assert spooler.track("kept")
        assert spooler.flush(timeout=10).pending == 1  # this flush's, or the thread's, failed
        assert set(spooler.health().failures) == {"collector_unavailable"}
    assert [e["name"] for e in stored_events(spool_path)] == ["kept"]
    assert sink.events() == []


def test_a_middleware_screens_with_its_own_spooler(spool_path: Path, tmp_path: Path) -> None:
    ours = sqreen.Spooler(path=tmp_path / "ours.db", ip_header="X-Forwarded-For")
    assert ours.track("opened")
    now = time.time()
    block = {"action": "block_ip", "action_id": "own", "parameters": {"ip_cidr": ["192.0.2.0/24"]}}
    add_operator_action(ours._store, read_action(block, now, "operator"), now)
    sqreen.configure(path=spool_path)  # the default spooler: no action
    app = flask.Flask("seams")
    app.add_url_rule("/", "index", lambda: "open")
    plain = app.wsgi_app
    app.wsgi_app = wsgi.SqreenMiddleware(plain, spooler=ours)  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/", headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 403
    app.wsgi_app = wsgi.SqreenMiddleware(plain)  # type: ignore[method-assign]
    assert client.get("/", headers={"X-Forwarded-For": "192.0.2.9"}).text == "open"
    ours.close()


def test_a_spooler_closes_at_the_end_of_its_block(spool_path: Path) -> None:
    with sqreen.Spooler(path=spool_path) as spooler:
        assert spooler.track("inside")
        maintenance = spooler._upkeep._worker._thread
        assert maintenance is not None and maintenance.is_alive()
    maintenance.join(1)
    assert not maintenance.is_alive()
    assert (
        spooler._store.connections._raw is None
    )  # the file is closed: the next use would reopen it
