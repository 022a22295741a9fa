"""The event store: one SQLite file holding every event a collector accepted, the playbooks'
state and the notifications to send.

Built on the spool's own storage engineering: the file made safely (0600 in a 0700 directory,
never through a link, see :func:`sqreen.storage.files.prepare_path`), connections configured
like the spool's (WAL, incremental vacuum) with ``synchronous=FULL``: a batch is on disk before
its 2xx answer. Every worker process opens the file; each batch is one ``BEGIN IMMEDIATE``
transaction, so that workers take turns on SQLite's write lock and decide once. An event id is
the primary key: a batch delivered twice, to two workers or across a restart, is kept once.

Bounded by age (``max_age``) and size (``max_bytes``: the oldest events go first), checked by
:meth:`EventStore.prune`, which the collector runs every few seconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..automation import state
from ..errors import NotASpool, SpoolError
from ..storage.files import file_bytes, prepare_path
from ..storage.opening import configured
from ..storage.sql import pragma, run_script, scalar
from ..wire import parse_time

SCHEMA_VERSION = 1
STORE_TABLES = frozenset({"store_meta", "events"})
DEFAULT_MAX_AGE = 30 * 86400.0
DEFAULT_MAX_BYTES = 1 << 30
WAL_LIMIT = 64 << 20
# Past the size bound, the oldest events are dropped in steps of this share of it.
PRUNE_STEP = 0.05
PRUNE_BATCH = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, at REAL NOT NULL,
    received_at REAL NOT NULL, ip TEXT, user TEXT, payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_name_at ON events (name, at);
-- Covering for the explorer's trend and its breakdowns by name, IP and user over a time range.
CREATE INDEX IF NOT EXISTS events_at ON events (at, name, ip, user);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY, url TEXT NOT NULL, body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT
);
"""
_DROP_OLDEST = "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)"
# Decisions go once their time is long past; a block until removed stays.
_FORGET_DECISIONS = (
    "DELETE FROM pb_decisions WHERE max(at, coalesce(expires, quiet_until, at)) < ? "
    f"AND NOT (status IN {state.STOPPING} AND expires IS NULL)"
)
_LOOKUP = 500  # ids per query: SQLite takes at most 32,766 parameters
_INSERT = (
    "INSERT INTO events (id, name, at, received_at, ip, user, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)


def user_text(identifiers: Mapping[str, Any]) -> str:
    """A user's identifiers as one comparable text (keys sorted, values as sent)."""
    return orjson.dumps(identifiers, option=orjson.OPT_SORT_KEYS).decode()


class NotAStore(SpoolError):
    """The file is not an event store this code can use; the message says why."""


class EventStore:
    """One event store file, shared by the threads of this process (one connection, taken in
    turn) and by other processes (SQLite's write lock)."""

    def __init__(
        self,
        path: Path,
        max_age: float = DEFAULT_MAX_AGE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        lock_timeout: float = 30.0,
    ) -> None:
        self.path, self.max_age, self.max_bytes = path, max_age, max_bytes
        self._lock = threading.Lock()
        try:
            prepare_path(path, STORE_TABLES, "--store")
        except NotASpool as exc:
            raise NotAStore(f"not an event store: {exc}") from None
        try:
            self._connection = configured(path, lock_timeout, "power", WAL_LIMIT)
        except sqlite3.DatabaseError as exc:
            raise NotAStore(f"{path} is not an event store: {exc}") from None
        try:
            self._connection.execute("PRAGMA wal_autocheckpoint=1000").close()
            with self.transaction() as connection:
                self._create(connection)
        except BaseException:
            self._connection.close()
            raise

    def _create(self, connection: sqlite3.Connection) -> None:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if names and "store_meta" not in names:
            raise NotAStore(f"{self.path} is an SQLite file but not an event store")
        run_script(connection, _SCHEMA)
        state.create(connection)
        version = scalar(connection, "SELECT value FROM store_meta WHERE key = 'version'")
        if version is None:
            connection.execute(
                "INSERT INTO store_meta (key, value) VALUES ('version', ?)", (SCHEMA_VERSION,)
            )
        elif int(version) > SCHEMA_VERSION:
            raise NotAStore(
                f"{self.path} was written by a newer sqreen-spool (store version {version})"
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, held from its first statement (``BEGIN IMMEDIATE``)."""
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads (each statement its own snapshot)."""
        with self._lock:
            yield self._connection

    def add(
        self, connection: sqlite3.Connection, events: Sequence[Mapping[str, Any]], now: float
    ) -> list[Mapping[str, Any]]:
        """Keep the events this store has not seen (by id); return those, in order. The
        caller's transaction holds the write lock: no other worker adds one meanwhile."""
        ids = [event["id"] for event in events]
        seen: set[str] = set()
        for start in range(0, len(ids), _LOOKUP):
            chunk = ids[start : start + _LOOKUP]
            marks = ",".join("?" * len(chunk))
            found = connection.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk)
            seen.update(row[0] for row in found)
        new, rows = [], []
        for event in events:
            if event["id"] in seen:
                continue
            seen.add(event["id"])  # an id repeated within the batch is new only once
            request = event.get("request")
            ip = request.get("ip") if isinstance(request, dict) else None
            at = parse_time(event["timestamp"]).timestamp()
            who = event.get("user_identifiers")
            ip = ip if isinstance(ip, str) else None
            who = user_text(who) if who else None
            rows.append(
                (event["id"], event["name"], at, now, ip, who, orjson.dumps(event).decode())
            )
            new.append(event)
        connection.executemany(_INSERT, rows)
        return new

    def prune(self, now: float) -> dict[str, int]:
        """Drop events older than ``max_age``, then the oldest while the file is over
        ``max_bytes``, and decisions long expired; how many events went, by reason."""
        with self.transaction() as connection:
            aged = connection.execute(
                "DELETE FROM events WHERE at < ?", (now - self.max_age,)
            ).rowcount
            connection.execute(_FORGET_DECISIONS, (now - self.max_age,))
        sized = 0
        while file_bytes(self.path) > self.max_bytes:
            with self.transaction() as connection:
                used = pragma(connection, "page_count") - pragma(connection, "freelist_count")
                full = used * pragma(connection, "page_size") > self.max_bytes * (1 - PRUNE_STEP)
                if full:  # the data itself is too large: the oldest events go
                    deleted = connection.execute(_DROP_OLDEST, (PRUNE_BATCH,)).rowcount
                    sized += deleted
                else:  # free pages and the WAL: give them back to the disk
                    connection.execute("PRAGMA incremental_vacuum").fetchall()
            with self.reading() as connection:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            if not full or not deleted:
                break
        if aged or sized:
            with self.transaction() as connection:
                state.add(connection, "pruned.age", aged)
                state.add(connection, "pruned.size", sized)
        return {"age": aged, "size": sized}

    def count(self) -> int:
        with self.reading() as connection:
            return int(scalar(connection, "SELECT count(*) FROM events"))

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
