"""Replay: recorded history through a (draft) playbook file, with the engine live runs.

The events are read in timestamp order, from an event store (read-only: a live collector may be
using it) or from JSON lines in the wire format (loaded first into a private store, so that a
file of millions of events is sorted on disk, not in memory). The engine's state goes to a
private file too, and each event's own time is the engine's ``now``: a decision is taken at the
crossing event's time, and the events of its key that its block would have stopped are counted.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from ..automation import state
from ..automation.engine import Decision, Engine
from ..automation.playbooks import Playbooks
from ..storage.files import is_sqlite, read_only
from ..wire import check_event
from .store import EventStore

# Events run through the engine per transaction of the private state file.
CHUNK = 5000


class BadSource(ValueError):
    """Events that cannot be replayed; the message says why."""


def replay(
    playbooks: Playbooks, source: Path, progress: Callable[[int], None] = lambda n: None
) -> list[Decision]:
    """Every decision the playbooks take over the events of ``source``, in the order taken."""
    with tempfile.TemporaryDirectory(prefix="sqreen-replay-") as directory:
        work = Path(directory)
        with _events(source, work) as events:
            return run(playbooks, events, work, progress)


def run(
    playbooks: Playbooks, events: Iterator[Mapping[str, Any]], work: Path,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Decision]:  # fmt: skip
    """The decisions the playbooks take over ``events`` (in timestamp order), their state in a
    scratch file in the directory ``work``."""
    connection = sqlite3.connect(work / "state.db", isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")  # a scratch file
        state.create(connection)
        engine = Engine(playbooks)
        done = 0
        for chunk in _chunks(events):
            connection.execute("BEGIN")
            engine.process(connection, chunk, None)
            connection.execute("COMMIT")
            done += len(chunk)
            progress(done)
        return [Decision.from_row(row) for row in state.decisions(connection)]
    finally:
        connection.close()


def _chunks(events: Iterator[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
    chunk: list[Mapping[str, Any]] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _events(source: Path, work: Path) -> Iterator[Iterator[Mapping[str, Any]]]:
    """The events of a store or a JSON-lines file, in timestamp order."""
    try:
        sqlite = is_sqlite(source)
    except OSError as exc:
        raise BadSource(f"{source}: {exc.strerror or exc}") from None
    if sqlite:
        store = source
    else:
        store = work / "events.db"
        load_lines(source, store)
    try:
        connection = read_only(store)
        rows = connection.execute("SELECT payload FROM events ORDER BY at, seq")
    except sqlite3.Error as exc:
        raise BadSource(f"{source}: not an event store ({exc})") from None
    try:
        yield (orjson.loads(payload) for (payload,) in rows)
    finally:
        connection.close()


def load_lines(source: Path, store: Path) -> None:
    """JSON lines into a scratch store, each line checked as the collector checks an event;
    BadSource naming the first line that is not one."""
    with source.open("rb") as file, EventStore(store, max_bytes=1 << 62) as events:
        with events.reading() as connection:
            connection.execute("PRAGMA synchronous=OFF")  # a scratch file
        with events.transaction() as connection:
            _add_lines(file, events, connection, source)


def _add_lines(
    file: IO[bytes], events: EventStore, connection: sqlite3.Connection, source: Path
) -> None:
    for number, line in enumerate(file, 1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadSource(f"{source}: line {number} is not JSON") from None
        problem = (
            "not an event object"
            if not isinstance(event, dict) or not isinstance(event.get("id"), str)
            else check_event(event)
        )
        if problem is not None:
            raise BadSource(f"{source}: line {number}: {problem}")
        events.add(connection, [event], 0.0)
