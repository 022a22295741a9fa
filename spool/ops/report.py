"""Reading a spool for an operator: its summary and its events, without changing anything.

Everything here runs on a read-only connection (see :func:`read_only_engine`). Listings page
through the rows by ``seq``, one short statement per page, so that memory stays flat however
large the spool, and no long read transaction holds back the application's checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine

from .. import clock, processes
from ..errors import SpoolError
from ..stats import COUNTS
from ..storage.counters import dropped, dropped_security, failures, unreported
from ..storage.packing import Packer, Unreadable, id_key, id_text
from ..storage.revision import check_known, oldest_writer, read_revision
from ..storage.schema import HEAD, PENDING, REVISIONS, STATUS_NAMES
from ..storage.sql import driver
from ..urls import mask_url
from ..wire import iso
from .selection import Selection

PAGE = 500

_OLDEST = "SELECT id, name, enqueued_at FROM events WHERE status = :pending ORDER BY seq LIMIT 1"
_EVENTS = (
    "SELECT seq, id, payload, packing, status, enqueued_at, settled_at, attempts, last_error, "
    "lease_expires, next_attempt_at FROM event_state WHERE {where} AND seq > :after "
    "ORDER BY seq LIMIT :page"
)


@dataclass(frozen=True)
class Summary:
    """What ``sqreen-spool inspect`` shows. Times are ISO-8601 UTC strings."""

    path: str
    file_bytes: int
    schema_revision: str
    counts: dict[str, int]
    dropped: dict[str, int]
    dropped_security: dict[str, int]  # the security events among them
    dropped_unreported: dict[str, int]
    failures: dict[str, int]
    last_failure: dict[str, Any] | None
    oldest_pending: dict[str, Any] | None
    last_attempt: dict[str, Any] | None
    url: str | None  # the inspecting command's own (--url), not an application's
    token_set: bool
    processes: list[dict[str, Any]] = field(default_factory=list)  # what each says it does
    delivered_total: int = 0  # every event delivered since the spool was made

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_readable(conn: Connection) -> str:
    """The spool's schema revision, if this code can read it; else SpoolError saying why."""
    revision = read_revision(driver(conn))
    check_known(revision, oldest_writer(driver(conn)))  # a newer, additive schema reads too
    if revision is None:
        raise SpoolError("the file has no spool schema yet")
    if revision in REVISIONS and revision != HEAD:
        raise SpoolError(
            f"the spool's schema revision {revision!r} is older than this sqreen-spool reads "
            f"({HEAD!r}); run `sqreen-spool migrate` first"
        )
    return revision


def summarize(
    engine: Engine, path: Path, file_bytes: int, url: str | None, token_set: bool
) -> Summary:
    """Summarize the spool behind ``engine`` (a read-only engine)."""
    now = clock.now()
    with engine.connect() as conn:
        revision = check_readable(conn)
        counts = {"pending": 0, "leased": 0, "rejected": 0, "delivered": 0}
        for status, n, leased in conn.exec_driver_sql(COUNTS, {"now": now}):
            counts[STATUS_NAMES.get(status, str(status))] = n
            if status == PENDING:
                counts["leased"] = leased
        counters = {n: v for n, v in conn.exec_driver_sql("SELECT name, value FROM counters")}
        notes = {
            name: orjson.loads(value)
            for name, value in conn.exec_driver_sql("SELECT name, value FROM notes")
        }
        oldest = conn.exec_driver_sql(_OLDEST, {"pending": PENDING}).first()
        alive = processes.read(driver(conn), now)
    return Summary(
        path=str(path),
        file_bytes=file_bytes,
        schema_revision=revision,
        counts=counts,
        dropped=dropped(counters),
        dropped_security=dropped_security(counters),
        dropped_unreported=unreported(counters),
        failures=failures(counters),
        last_failure=_with_times(notes.get("last_failure")),
        oldest_pending=None
        if oldest is None
        else {
            "id": id_text(oldest.id),
            "name": oldest.name,
            "enqueued_at": iso(oldest.enqueued_at),
            "age_seconds": round(now - oldest.enqueued_at, 3),
        },
        last_attempt=_with_times(notes.get("last_attempt")),
        url=None if url is None else mask_url(url),
        token_set=token_set,
        processes=alive,
        delivered_total=int(counters.get("delivered", 0)),
    )


def events(
    engine: Engine, selection: Selection, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """The selected events, oldest first: the wire format's fields plus their spool state."""
    where, params = selection.where()
    statement = _EVENTS.format(where=where)
    after, left, packer = 0, limit, Packer()
    while left is None or left > 0:
        page = PAGE if left is None else min(PAGE, left)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(statement, {**params, "after": after, "page": page}).all()
            unpack = partial(_payload, packer, driver(conn))
            records = [_record(row, unpack(row)) for row in rows]
        yield from records
        if len(rows) < page:
            return
        after = rows[-1].seq
        if left is not None:
            left -= len(rows)


def count(engine: Engine, selection: Selection) -> int:
    """How many events the selection matches."""
    where, params = selection.where()
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(f"SELECT count(*) FROM events WHERE {where}", params).scalar_one()
        )


def find(engine: Engine, event_id: str) -> dict[str, Any] | None:
    """One event by its delivery id, whatever its status."""
    return next(events(engine, Selection.of("all", ids=[event_id]), limit=1), None)


def stored_bytes(engine: Engine, event_id: str) -> bytes | None:
    """One event's stored JSON, byte for byte what a sink sends (a POST's ``events`` item, a
    JetStream message's body)."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT id, payload, packing FROM events WHERE id IN (?, ?)",
            (event_id, id_key(event_id)),
        ).first()
        return None if row is None else Packer().unpack(driver(conn), *row)


def _payload(packer: Packer, connection: Any, row: Any) -> bytes:
    """A row's payload as sent; for a row that cannot be unpacked, its id and why."""
    try:
        return packer.unpack(connection, row.id, row.payload, row.packing)
    except Unreadable as exc:
        return orjson.dumps({"id": id_text(row.id), "unreadable": str(exc)})


def _record(row: Any, payload: bytes) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(payload)
    record["status"] = STATUS_NAMES.get(row.status, str(row.status))
    record["enqueued_at"] = iso(row.enqueued_at)
    if row.settled_at is not None:
        record["settled_at"] = iso(row.settled_at)
    if row.attempts:
        record["attempts"] = row.attempts
    if row.last_error:
        record["last_error"] = row.last_error
    if row.status == PENDING and row.next_attempt_at > clock.now():
        record["next_attempt_at"] = iso(row.next_attempt_at)  # why it waits: its backoff
    if row.status == PENDING and row.lease_expires > clock.now():
        record["leased_until"] = iso(row.lease_expires)
    return record


def _with_times(note: dict[str, Any] | None) -> dict[str, Any] | None:
    if note is not None and isinstance(note.get("at"), int | float):
        note = {**note, "at": iso(note["at"])}
    return note
