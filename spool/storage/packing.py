"""Event payloads packed with zstd and a dictionary trained on the spool's own events.

A spool holds many small JSON documents that share almost all their structure (keys, names,
user agents, hosts) and differ in a few values. Compressed one by one, zstd alone gains little
on a few hundred bytes; with a dictionary trained on the spool's own events it stores a fifth
of them, in about 2 µs per event. So ``track()`` packs each payload itself, under the writer's
lock, and delivery unpacks it (under a microsecond).

- The ``id`` the payload begins with (``{"id":"<uuid>",``) is in its own column already, as its
  16 bytes (:func:`id_key`): a packed payload leaves it out, and unpacking puts it back, byte
  for byte. Rows of releases before hold it as text; the repacking converts them.
- Dictionaries live in the spool (``dictionaries``: a number, when trained, the bytes) and
  never change; a row names the one it was packed with (``packing``; NULL or 0: the payload as
  sent). Any process can read any row, whichever process packed it.
- Until a spool has a dictionary, rows are stored as sent. The maintenance thread trains one
  once :data:`TRAIN_AFTER` events are in the spool (tens of milliseconds, off the hot path),
  and then repacks the rows stored as sent, a few hundred per transaction (at most
  :data:`REPACK_STEP`, fewer under a small bound: see :func:`repack_step`), each followed by a
  checkpoint, so that the WAL stays within its limit and the writers are never held off for
  more than a few milliseconds (see :func:`keep_packed`). Other processes take the new
  dictionary up at their next maintenance run (:meth:`Packer.refresh`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import zstandard

from .. import clock

if TYPE_CHECKING:
    from .store import Store

# Trained once the spool holds this many events: enough for a dictionary that packs as well as
# one trained on many more (measured: 54.6 bytes a payload from 500, 1,000 or 2,000 samples).
# The maintenance thread first runs after this many commits (see sqreen.upkeep), so that few
# rows are stored as sent.
TRAIN_AFTER = 500
DICTIONARY_BYTES = 16 * 1024
LEVEL = 3
# Rows repacked per transaction (about 4 ms of the writers' time), and transactions per
# maintenance run at most.
REPACK_STEP = 500
REPACK_RUNS = 20

# A row's packing: NULL, stored as sent before the spool had a dictionary (to be repacked);
# AS_SENT, stored as sent for good (not the library's encoding); else its dictionary's id.
AS_SENT = 0
_HEAD = b'{"id":"'
# How a payload that sqreen.event.build encoded begins: {"id":"<36 characters>",
BUILT_HEAD = len(_HEAD) + 36 + 2
_NEWEST = "SELECT id, data FROM dictionaries ORDER BY trained_at DESC, id LIMIT 1"
_SAMPLE = "SELECT id, payload, packing FROM events ORDER BY seq DESC LIMIT ?"
_RAW = "SELECT seq, id, payload FROM events WHERE packing IS NULL ORDER BY seq LIMIT ?"
_REPACK = "UPDATE events SET payload = ?, packing = ?, id = ? WHERE seq = ? AND packing IS NULL"
# Numbered from 1 (a row's packing 1 takes no byte in SQLite's record format). A number is
# only meaningful within one file: a process that opens another file forgets what it knew.
_STORE = "INSERT INTO dictionaries (trained_at, data) VALUES (?, ?)"


def _head(event_id: str) -> bytes:
    return b'%s%s",' % (_HEAD, event_id.encode())


def id_key(event_id: str) -> bytes | str:
    """An event id as its row stores it: a canonical UUID string as its 16 bytes, anything
    else (an imported id in another spelling) as it is, so that it is sent as it came."""
    try:
        key = bytes.fromhex(event_id.replace("-", ""))
    except ValueError:
        return event_id
    return key if len(key) == 16 and id_text(key) == event_id else event_id


def id_text(key: bytes | str) -> str:
    """An event id as sent, from its row (rows of releases before 0007_packed hold the text)."""
    if isinstance(key, str):
        return key
    h = key.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Unreadable(Exception):
    """A row whose payload cannot be unpacked: its dictionary is missing, or its bytes are not
    what packing wrote (a damaged page). Such a row is refused, never sent (see
    :meth:`.outbox.Outbox.claim`)."""


def _decompressor(data: bytes) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(bytes(data)))


class Packer:
    """One process's packing of one spool: the newest dictionary's compressor (for the
    writer, which calls :meth:`pack` under its lock) and a decompressor per dictionary seen."""

    def __init__(self) -> None:
        self._current: tuple[int, zstandard.ZstdCompressor] | None = None
        self._readers: dict[int, zstandard.ZstdDecompressor] = {}
        self._lock = threading.Lock()  # a decompressor serves one thread at a time

    @property
    def ready(self) -> bool:
        """Whether this process packs new rows (it has seen a dictionary)."""
        return self._current is not None

    @property
    def current(self) -> tuple[int, zstandard.ZstdCompressor] | None:
        """The newest dictionary's number and compressor, for the hot path (see
        :meth:`Store.insert`): None until this process has seen one."""
        return self._current

    def pack(self, event_id: str, payload: bytes) -> tuple[bytes, int | None]:
        """The row's payload and packing for an event: packed with the newest dictionary this
        process knows, or as sent when it knows none."""
        current = self._current
        if current is None:
            return payload, None
        head = _head(event_id)
        if not payload.startswith(head):  # not the library's own encoding: kept as sent
            return payload, AS_SENT
        number, compressor = current
        return compressor.compress(memoryview(payload)[len(head) :]), number

    def unpack(
        self, connection: sqlite3.Connection, key: bytes | str, payload: bytes, packing: int | None
    ) -> bytes:
        """The event's payload as sent, from its row's id, payload and packing (``connection``
        reads a dictionary this process has not seen yet)."""
        with self._lock:
            return self._unpacked(connection, id_text(key), payload, packing)

    def unpack_rows(
        self, connection: sqlite3.Connection, rows: Iterable[Sequence[Any]]
    ) -> tuple[list[tuple[Any, str, bytes]], dict[Any, str]]:
        """``(seq, id, payload, packing)`` rows as ``(seq, id as sent, payload as sent)``, and
        the rows that cannot be unpacked (seq to why)."""
        readable, unreadable = [], {}
        with self._lock:  # once for the whole batch: the delivery's inner loop
            for seq, key, payload, packing in rows:
                text = id_text(key)
                try:
                    readable.append((seq, text, self._unpacked(connection, text, payload, packing)))
                except Unreadable as exc:
                    unreadable[seq] = str(exc)
        return readable, unreadable

    def read_all(self, connection: sqlite3.Connection) -> None:
        """Read every dictionary of the spool now (for a caller that cannot query later)."""
        with self._lock:
            for number, data in connection.execute("SELECT id, data FROM dictionaries"):
                self._readers[number] = _decompressor(data)

    def _unpacked(
        self, connection: sqlite3.Connection, text: str, payload: bytes, packing: int | None
    ) -> bytes:
        """One row's payload as sent, for a caller holding the lock (``text``: its id)."""
        if not packing:
            return bytes(payload)
        reader = self._readers.get(packing) or self._reader(connection, packing)
        try:
            return _head(text) + reader.decompress(payload)
        except zstandard.ZstdError as exc:
            raise Unreadable(f"its packed payload does not unpack ({exc})") from None

    def refresh(self, connection: sqlite3.Connection) -> bool:
        """Take up the spool's newest dictionary, if this process does not pack with it yet;
        True when it changed."""
        row = connection.execute(_NEWEST).fetchone()
        if row is None or (self._current is not None and self._current[0] == row[0]):
            return False
        number, data = row
        dictionary = zstandard.ZstdCompressionDict(bytes(data))
        compressor = zstandard.ZstdCompressor(
            level=LEVEL, dict_data=dictionary, write_checksum=False, write_dict_id=False
        )
        with self._lock:
            self._readers.setdefault(number, _decompressor(data))
        self._current = number, compressor
        return True

    def forget(self) -> None:
        """Forget every dictionary (the spool's file was replaced by a fresh one)."""
        with self._lock:
            self._current, self._readers = None, {}

    def _reader(self, connection: sqlite3.Connection, number: int) -> zstandard.ZstdDecompressor:
        row = connection.execute("SELECT data FROM dictionaries WHERE id = ?", (number,))
        found = row.fetchone()
        if found is None:
            raise Unreadable(f"it was packed with dictionary {number}, which the spool lacks")
        reader = self._readers[number] = _decompressor(found[0])
        return reader


def readable(connection: sqlite3.Connection) -> sqlite3.Connection:
    """Give ``connection`` two SQL functions that read a row as it is sent, for scripts, tests
    and the operator's tools: ``sent_id(id)`` and ``sent_payload(id, payload, packing)``
    (NULL for a row that cannot be unpacked).

    The spool's dictionaries are read now (a SQL function must not query its connection): a
    dictionary trained later is not known to it."""
    packer = Packer()
    packer.read_all(connection)

    def sent_payload(key: bytes | str, payload: bytes, packing: int | None) -> bytes | None:
        try:
            return packer.unpack(connection, key, payload, packing)
        except Unreadable:
            return None  # a damaged row reads as NULL

    connection.create_function("sent_id", 1, id_text, deterministic=True)
    connection.create_function("sent_payload", 3, sent_payload, deterministic=True)
    return connection


def keep_packed(store: Store, steps: int = REPACK_RUNS, train_after: int = TRAIN_AFTER) -> int:
    """The maintenance thread's share: take up a dictionary another process trained, or train
    one once the spool holds enough events, then repack rows stored as sent, in steps of
    :data:`REPACK_STEP` rows, each its own short transaction; return how many were repacked.

    Training reads through the reader's connection and runs outside any transaction (tens of
    milliseconds that no writer waits for); only storing the dictionary takes the writer's."""
    packer, samples = store.packer, list[bytes]()
    if not packer.ready:
        with store.reading() as connection:
            if not packer.refresh(connection):
                samples = _samples(connection, packer, train_after)
        if not packer.ready and samples:
            data = _train(samples)
            if data is not None:
                with store.write() as connection:
                    if connection.execute("SELECT 1 FROM dictionaries").fetchone() is None:
                        connection.execute(_STORE, (clock.now(), data))
                    packer.refresh(connection)
    repacked, step = 0, repack_step(store)
    for _ in range(steps if packer.ready else 0):
        with store.write() as connection:
            rows = connection.execute(_RAW, (step,)).fetchall()
            repacking = [(*packer.pack(id_text(i), p), id_key(id_text(i)), s) for s, i, p in rows]
            connection.executemany(_REPACK, repacking)
        repacked += len(rows)
        # Each step rewrites its rows' pages into the WAL: copied out before the next, or a
        # spool of rows stored as sent would grow the WAL by megabytes past the size bound.
        store.checkpoint()
        if len(rows) < step:
            break
    return repacked


def repack_step(store: Store) -> int:
    """Rows repacked per transaction: at most :data:`REPACK_STEP`, and few enough that their
    pages (a few KiB a row at most) stay within half the store's WAL limit."""
    return max(16, min(REPACK_STEP, store.wal_limit // 4096))


def _samples(connection: sqlite3.Connection, packer: Packer, count: int) -> list[bytes]:
    """The newest ``count`` events' payloads without their id, to train on; none while there
    are fewer."""
    rows = connection.execute(_SAMPLE, (count,)).fetchall()
    if len(rows) < count:
        return []
    unpacked, _ = packer.unpack_rows(connection, ((None, *row) for row in rows))
    return [p[len(_head(i)) :] for _, i, p in unpacked if p.startswith(_head(i))]


def _train(samples: list[bytes]) -> bytes | None:
    try:
        trained = zstandard.train_dictionary(DICTIONARY_BYTES, list[Any](samples), level=LEVEL)
        return bytes(trained.as_bytes())
    except zstandard.ZstdError:
        return None  # too few distinct samples to learn from: stored as sent meanwhile
