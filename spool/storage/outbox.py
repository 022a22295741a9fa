"""Delivery state in the spool: claims (leases), outcomes, drop counters, notes.

Every change here is one short ``BEGIN IMMEDIATE`` transaction through :meth:`Store.write`.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

import orjson

from ..config import LEASE_MAX
from ..event import new_id
from .counters import add, note, unreported_drops
from .schema import DELIVERED, PENDING, REJECTED
from .store import Store

# Row-level backoff after a failed delivery: 5 s, 10 s, 20 s, ... capped at an hour, jittered.
BACKOFF_BASE = 5.0
BACKOFF_MAX = 3600.0
# The latest a backoff is ever written to end, from its writing: the cap, jittered (a collector's
# Retry-After is capped lower).
WAIT_HORIZON = BACKOFF_MAX * 1.2

# Sets of rows are passed as one JSON array parameter (json_each), not as an expanded IN list:
# one bound parameter instead of a thousand, and no per-row work in Python.
_SEQS = "(SELECT value FROM json_each(:seqs))"
# A claim holds the span of seqs from its batch's first row to its last. Before claiming, a
# flusher drops the expired claims and its own (it has settled its previous batch), so the live
# claims are few and a row is claimable when no claim's span covers it.
# A claim expiring later than LEASE_MAX from now, or a backoff ending later than WAIT_HORIZON
# from now, was written before the wall clock stepped back: read as expired, or due, at once
# (waiting it out could take as long as the step, a day or more). Not the reader's own lease:
# other flushers may have longer ones.
_EXPIRE = "DELETE FROM claims WHERE expires <= :now OR expires > :latest OR owner = :owner"
_CLAIM = (
    "SELECT events.seq, events.id, events.payload, events.packing FROM events "
    "LEFT JOIN retries USING (seq) "
    "WHERE events.status = :pending AND events.security >= :security "
    "AND (coalesce(retries.next_attempt_at, 0) <= :due OR retries.next_attempt_at > :horizon) "
    "AND NOT EXISTS (SELECT 1 FROM claims WHERE events.seq BETWEEN lo AND hi) "
    "ORDER BY events.seq LIMIT :limit"
)
# The usual claim: the oldest pending rows, none of them claimed or backing off. Checking that
# takes two small probes, where _CLAIM looks at both tables for every row.
_OLDEST = (
    "SELECT seq, id, payload, packing FROM events WHERE status = :pending ORDER BY seq LIMIT :limit"
)
# Security events are claimed first (see sqreen.priority), through their partial index (migration
# 0006_security): with none pending, one probe of an empty index.
_OLDEST_SECURITY = (
    "SELECT seq, id, payload, packing FROM events WHERE security = 1 AND status = :pending "
    "ORDER BY seq LIMIT :limit"
)
_HELD_BACK = (
    "SELECT EXISTS (SELECT 1 FROM claims WHERE lo <= :hi AND hi >= :lo) "
    "OR EXISTS (SELECT 1 FROM retries WHERE seq BETWEEN :lo AND :hi "
    "AND next_attempt_at > :due AND next_attempt_at <= :horizon)"
)
_HOLD = "INSERT INTO claims (owner, lo, hi, expires) VALUES (:owner, :lo, :hi, :until)"
_RELEASE = "DELETE FROM claims WHERE owner = :owner"
# Deleting an event also deletes its retry row (trigger events_forget).
_DELETE = f"DELETE FROM events WHERE seq IN {_SEQS}"
_DELETE_SPAN = "DELETE FROM events WHERE seq BETWEEN :lo AND :hi"
_SETTLE = f"UPDATE events SET status = :status, settled_at = :now WHERE seq IN {_SEQS}"
# Each event backs off by its own attempt count: BACKOFF_BASE * 2^attempts, capped, jittered,
# and never sooner than the collector's Retry-After.
_FAIL = (
    "INSERT INTO retries (seq, attempts, next_attempt_at, last_error) "
    "SELECT value, 1, max(:not_before, :now + :jitter * :base), :error FROM json_each(:seqs) "
    "WHERE true ON CONFLICT (seq) DO UPDATE SET attempts = attempts + 1, "
    "last_error = excluded.last_error, next_attempt_at = max(:not_before, :now + :jitter * "
    "min(:cap, :base * (1 << min(retries.attempts, 20))))"
)
_REASON = (
    "INSERT INTO retries (seq, attempts, next_attempt_at, last_error) VALUES (:seq, 0, 0, :error) "
    "ON CONFLICT (seq) DO UPDATE SET last_error = excluded.last_error"
)
_LIVE_OWNERS = "SELECT DISTINCT owner FROM claims WHERE expires > :now AND expires <= :latest"
_FORGET_OWNERS = "DELETE FROM claims WHERE owner IN (SELECT value FROM json_each(:owners))"


@dataclass(frozen=True)
class Batch:
    """Claimed events as columns: positions in the spool, delivery ids, wire bytes.

    Columns, not a row object per event: a claim builds them from the cursor's rows in C
    (``zip``), where a thousand row objects cost a tenth of a whole delivery."""

    seqs: Sequence[int] = ()
    ids: Sequence[str] = ()
    payloads: Sequence[bytes] = ()

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, part: slice) -> Batch:
        return Batch(self.seqs[part], self.ids[part], self.payloads[part])


class Claim(NamedTuple):
    """A batch claimed for delivery, the drops not yet reported, and whether more rows were due
    (the batch was full) when it was claimed."""

    batch: Batch
    dropped: dict[str, int]
    more: bool


class Outbox:
    """Claims and settles rows of one spool."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim(
        self,
        owner: str,
        limit: int,
        max_bytes: int,
        lease: float,
        now: float,
        ignore_backoff: bool = False,
    ) -> Claim:
        """Claim up to ``limit`` due pending rows (at most ``max_bytes`` of payload), security
        events first, oldest first, releasing the owner's previous claim.

        Rows another flusher claimed are skipped until its claim is released or expires, so two
        flushers never post the same rows at once, and rows of a flusher that died are retried
        later.
        """
        due = float("inf") if ignore_backoff else now
        horizon = now + WAIT_HORIZON
        with self.store.write() as raw:
            raw.execute(_EXPIRE, {"now": now, "latest": now + LEASE_MAX, "owner": owner})
            params = {"pending": PENDING, "due": due, "horizon": horizon, "limit": limit}
            found = self._oldest(raw, _OLDEST_SECURITY, {**params, "security": 1})
            security = bool(found)  # then more may be due: the analytics behind them
            if not security:
                found = self._oldest(raw, _OLDEST, {**params, "security": 0})
            if found:
                hold = {"owner": owner, "lo": found[0][0], "hi": found[-1][0]}
                raw.execute(_HOLD, {**hold, "until": now + lease})
            dropped = unreported_drops(raw)
        # Unpacked (see .packing) once the writer's lock is released: a thousand payloads take
        # a millisecond or two, which this process's track() calls would otherwise wait. Rows
        # past max_bytes stay held until this owner's next claim, which releases them first.
        with self.store.reading() as reading:
            readable, unreadable = self.store.packer.unpack_rows(reading, found)
        if unreadable:  # never sent: refused, as a collector would refuse them
            with self.store.write() as raw:
                _refuse(raw, unreadable, now)
        batch = Batch(*zip(*readable, strict=True)) if readable else Batch()
        sizes = list(accumulate(map(len, batch.payloads)))
        if sizes and sizes[-1] + len(sizes) > max_bytes:  # each event also takes a comma
            fits = bisect_right([size + i for i, size in enumerate(sizes, 1)], max_bytes)
            batch = batch[: max(1, fits)]
        full = security or len(found) == limit or len(batch) < len(readable)
        return Claim(batch, dropped, full)

    @staticmethod
    def _oldest(raw: sqlite3.Connection, query: str, params: dict[str, Any]) -> list[Any]:
        """The oldest due rows that ``query`` selects (with ``params["security"]``, the class
        that :data:`_CLAIM` keeps when some of them are held back)."""
        found = raw.execute(query, params).fetchall()
        if found:
            span = {"lo": found[0][0], "hi": found[-1][0], **params}
            if raw.execute(_HELD_BACK, span).fetchone()[0]:
                found = raw.execute(_CLAIM, params).fetchall()
        return found

    def release_dead(self, now: float) -> None:
        """Release the live claims of flushers that died on this host (killed mid-batch), so
        their rows are sent now rather than when the lease runs out.

        An owner is ``host:pid:nonce``; a pid on another host cannot be checked, and a pid
        that still exists (or was reused) is taken as alive: the lease then simply expires.
        """
        host = socket.gethostname()
        with self.store.write() as raw:
            live = {"now": now, "latest": now + LEASE_MAX}
            owners = [owner for (owner,) in raw.execute(_LIVE_OWNERS, live)]
            dead = [owner for owner in owners if _died_here(owner, host)]
            if dead:
                raw.execute(_FORGET_OWNERS, {"owners": orjson.dumps(dead).decode()})

    def settle(
        self,
        seqs: Sequence[int],
        now: float,
        keep: bool,
        reported: Mapping[str, int],
        refused: Mapping[int, str],
        attempt: Mapping[str, Any],
    ) -> None:
        """Settle one answered POST in one transaction: rows the collector accepted, the drop
        report it received, rows it refused (seq to reason: rejected, counted) and the note."""
        with self.store.write() as raw:
            if keep:
                raw.execute(_SETTLE, {"status": DELIVERED, "now": now, "seqs": as_json(seqs)})
            elif seqs:
                _delete(raw, seqs)
            add(raw, "delivered", len(seqs))  # the running total, for stats() and metrics
            for reason, n in reported.items():
                add(raw, f"reported.{reason}", n)
            _refuse(raw, refused, now)
            note(raw, "last_attempt", attempt)

    def failed(
        self,
        seqs: Sequence[int],
        error: str,
        now: float,
        not_before: float,
        attempt: Mapping[str, Any],
    ) -> None:
        """Return rows to pending after a failed attempt, each backing off by its attempts (and
        held by the claim until it is released)."""
        params = {
            "error": error[:500],
            "now": now,
            "not_before": not_before,
            "jitter": random.uniform(0.8, WAIT_HORIZON / BACKOFF_MAX),
            "cap": BACKOFF_MAX,
            "base": BACKOFF_BASE,
            "seqs": as_json(seqs),
        }
        with self.store.write() as raw:
            raw.execute(_FAIL, params)
            note(raw, "last_attempt", attempt)

    def release(self, owner: str) -> None:
        """Release the owner's claim: its rows that are still pending can be claimed again."""
        with self.store.write() as raw:
            raw.execute(_RELEASE, {"owner": owner})


def owner_name() -> str:
    """A flusher's lease owner name: this host, this process, and a nonce for this flush."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"


def _died_here(owner: str, host: str) -> bool:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _delete(raw: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Delete rows, by range when they are contiguous, as a whole batch usually is: seqs are
    unique, so n of them spanning n values are that range."""
    lo, hi = min(seqs), max(seqs)
    if hi - lo + 1 == len(seqs):
        raw.execute(_DELETE_SPAN, {"lo": lo, "hi": hi})
    else:
        raw.execute(_DELETE, {"seqs": as_json(seqs)})


def as_json(seqs: Iterable[int]) -> str:
    return orjson.dumps(seqs if isinstance(seqs, list | tuple) else list(seqs)).decode()


def _refuse(raw: sqlite3.Connection, refused: Mapping[int, str], now: float) -> None:
    """Settle refused rows (seq to reason) as rejected, counted, in the caller's transaction."""
    if refused:
        raw.execute(_SETTLE, {"status": REJECTED, "now": now, "seqs": as_json(list(refused))})
        raw.executemany(_REASON, [{"seq": s, "error": why[:500]} for s, why in refused.items()])
        add(raw, "dropped.rejected", len(refused))
