"""Shared fixtures: real spool files in a temporary directory, read back with plain sqlite3."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import sqreen
from sqreen.storage import packing

CHILD = Path(__file__).with_name("child.py")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's settings or writes the developer's spool."""
    for name in list(os.environ):
        if name.startswith("SQREEN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(autouse=True)
def _fresh_default_spooler() -> Iterator[None]:
    """Each test starts without a default spooler and closes the one it made."""
    import sqreen.clock
    import sqreen.default

    yield
    with sqreen.default._default_lock:  # and the one sqreen.start() made
        spooler, sqreen.default._default = sqreen.default._default, None
        sqreen.default._started = None
    if spooler is not None:
        spooler.close()
    sqreen.clock.reset()  # a test that moved the clock (the model test) leaves it as it was


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "events.db"


@pytest.fixture
def spooler(spool_path: Path) -> Iterator[sqreen.Spooler]:
    spooler = sqreen.Spooler(path=spool_path)
    yield spooler
    spooler.close()


def readable(path: Path) -> sqlite3.Connection:
    """A connection to the spool with ``sent_id(id)`` and ``sent_payload(id, payload, packing)``
    (see sqreen.storage.packing.readable)."""
    return packing.readable(sqlite3.connect(path))


def stored_events(path: Path) -> list[dict[str, Any]]:
    """Every event in the spool, oldest first, decoded from its stored payload."""
    with contextlib.closing(readable(path)) as conn:
        query = "SELECT sent_payload(id, payload, packing) FROM events ORDER BY seq"
        rows = conn.execute(query).fetchall()
    return [orjson.loads(payload) for (payload,) in rows]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def run_child(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``tests/child.py`` with this interpreter (the project's venv)."""
    return subprocess.Popen([sys.executable, str(CHILD), *args], **kwargs)


@pytest.fixture
def collector() -> Iterator[Any]:
    from .collector import Collector

    server = Collector()
    yield server
    server.stop()


def rows(path: Path, where: str = "1") -> list[dict[str, Any]]:
    """The spool's rows (all columns), oldest first, with their id and payload as sent."""
    with contextlib.closing(readable(path)) as conn:
        conn.row_factory = sqlite3.Row
        query = (
            "SELECT *, sent_id(id) AS sent_id, sent_payload(id, payload, packing) AS sent "
            f"FROM event_state WHERE {where} ORDER BY seq"
        )
        found = conn.execute(query).fetchall()
    return [{**dict(row), "id": row["sent_id"], "payload": row["sent"]} for row in found]


def counters(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Any]:
    """A real ``nats-server -js`` on a free loopback port, with its own storage directory."""
    from .nats_servers import NatsServer

    running = NatsServer(tmp_path).start()
    yield running
    running.stop()
