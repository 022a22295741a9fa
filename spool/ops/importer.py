"""Importing past events from JSON lines, one event per line, by the rules of ``track()``.

Each line is ``{"name", "properties", "user_identifiers", "timestamp"}`` with ``timestamp`` an
ISO-8601 time (naive means UTC) or epoch seconds. Valid events are committed in batches: one
transaction per batch instead of one per event is what makes an import fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

import orjson

from ..errors import InvalidEvent
from ..event import MAX_EVENT_BYTES, RESERVED_PREFIX, Event, build
from ..storage.bound import enforce_size
from ..storage.store import Store
from ..wire import parse_time

LINE_KEYS = ("name", "properties", "user_identifiers", "timestamp")
BATCH_SIZE = 2000
# A line longer than this cannot make a valid event (at most MAX_EVENT_BYTES encoded, and JSON
# escapes take at most a few times the bytes they stand for): refused before it is parsed.
MAX_LINE_BYTES = 16 * MAX_EVENT_BYTES

_LINE_KEY_SET = frozenset(LINE_KEYS)

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


@dataclass
class ImportResult:
    """Lines read, events imported (or found valid, when nothing is written), invalid lines,
    and events the size limit dropped after the import."""

    lines: int = 0
    valid: int = 0
    invalid: int = 0
    dropped: int = 0


def bounded_lines(source: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of ``source``, each read in at most ``limit`` bytes of memory: a longer line
    is passed over to its end and given as None (too long to make a valid event)."""
    while line := source.readline(limit + 1):
        if len(line) <= limit or (line.endswith(b"\n") and len(line) == limit + 1):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of it, chunk by chunk
            line = source.readline(limit)
        yield None


def parse_line(line: bytes | None) -> Event:
    """One event from one JSON line (None: one longer than MAX_LINE_BYTES); InvalidEvent
    saying what is wrong with it."""
    if line is None:
        raise InvalidEvent(
            f"longer than {MAX_LINE_BYTES} bytes, more than any event of at most "
            f"{MAX_EVENT_BYTES} bytes can take"
        )
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        kind = _JSON_TYPES.get(type(record), "a number" if record is not None else "null")
        raise InvalidEvent(f"expected a JSON object, not {kind}")
    if not _LINE_KEY_SET.issuperset(record):
        unknown = ", ".join(repr(key) for key in record if key not in _LINE_KEY_SET)
        raise InvalidEvent(f"unknown key(s) {unknown}; allowed: {', '.join(LINE_KEYS)}")
    if "name" not in record:
        raise InvalidEvent('missing "name"')
    if isinstance(record["name"], str) and record["name"].startswith(RESERVED_PREFIX):
        raise InvalidEvent(f"event names starting with {RESERVED_PREFIX!r} are reserved for sqreen")
    options = {  # None, as for track(), means absent
        "properties": record.get("properties"),
        "user_identifiers": record.get("user_identifiers"),
        "timestamp": _timestamp(record.get("timestamp")),
    }
    return build(record["name"], options)


def import_lines(
    store: Store | None,
    lines: Iterable[bytes | None],
    on_invalid: Callable[[int, str], None],
    max_bytes: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> ImportResult:
    """Import every valid line into ``store`` (or only validate, when ``store`` is None),
    calling ``on_invalid(line_number, reason)`` for each invalid one. Blank lines are skipped.

    After the import the spool's size limit (``max_bytes``) is applied, as the flusher would.
    """
    result = ImportResult()
    batch: list[Event] = []
    for number, line in enumerate(lines, 1):
        result.lines = number
        if line is not None and not line.strip():
            continue
        try:
            event = parse_line(line)
        except InvalidEvent as exc:
            result.invalid += 1
            on_invalid(number, str(exc))
            continue
        result.valid += 1
        if store is not None:
            batch.append(event)
            if len(batch) >= batch_size:
                store.insert_many(batch)
                batch.clear()
                store.bulk_committed()  # it checkpoints: nothing else may (no application runs)
    if store is not None:
        if batch:
            store.insert_many(batch)
        store.checkpoint()
        if max_bytes is not None:
            result.dropped = enforce_size(store, max_bytes)
    return result


def _timestamp(value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError as exc:
            raise InvalidEvent(f"timestamp {exc}") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"timestamp {value!r} is out of range for epoch seconds") from None
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    raise InvalidEvent(f"timestamp must be an ISO-8601 string or epoch seconds, not {kind}")
