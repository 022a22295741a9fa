"""Delivery state on the spool's rows: claims (leases), outcomes, drop counters, notes.

Every change here is one short ``BEGIN IMMEDIATE`` transaction through :meth:`Store.transaction`.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection

from .event import new_id
from .schema import DELIVERED, DROP_REASONS, PENDING, REJECTED
from .store import Store

# Row-level backoff after a failed delivery: 5 s, 10 s, 20 s, ... capped at an hour, jittered.
BACKOFF_BASE = 5.0
BACKOFF_MAX = 3600.0

# Sets of rows are passed as one JSON array parameter (json_each), not as an expanded IN list:
# one bound parameter instead of a thousand, and no per-row work in Python.
_SEQS = "(SELECT value FROM json_each(:seqs))"
_CLAIM = (
    "SELECT events.seq, events.id, events.payload FROM events "
    "LEFT JOIN leases USING (seq) LEFT JOIN retries USING (seq) "
    "WHERE events.status = :pending AND coalesce(leases.expires, 0) <= :now "
    "AND coalesce(retries.next_attempt_at, 0) <= :due ORDER BY events.seq LIMIT :limit"
)
_LEASE = (
    "INSERT OR REPLACE INTO leases (seq, owner, expires) "
    "SELECT value, :owner, :until FROM json_each(:seqs)"
)
_UNLEASE = f"DELETE FROM leases WHERE seq IN {_SEQS}"
# Deleting an event also deletes its lease and retry rows (trigger events_forget).
_DELETE = f"DELETE FROM events WHERE seq IN {_SEQS}"
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
_LIVE_OWNERS = "SELECT DISTINCT owner FROM leases WHERE expires > :now"
_FORGET_OWNERS = "DELETE FROM leases WHERE owner IN (SELECT value FROM json_each(:owners))"
_RELEASE = f"DELETE FROM leases WHERE owner = :owner AND seq IN {_SEQS}"
_ADD = (
    "INSERT INTO counters (name, value) VALUES (:name, :n) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_NOTE = (
    "INSERT INTO notes (name, value) VALUES (:name, :value) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


class Row(NamedTuple):
    """A claimed event: its position, delivery id and wire bytes."""

    seq: int
    id: str
    payload: bytes


class Claim(NamedTuple):
    """Rows leased for one batch, the drops not yet reported, and whether more rows were due
    (the batch was full) when it was claimed."""

    rows: list[Row]
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
        """Lease up to ``limit`` due pending rows (at most ``max_bytes`` of payload), oldest
        first.

        Rows leased by another flusher are skipped until their lease expires, so two flushers
        never post the same rows at once, and rows of a flusher that died are retried later.
        """
        due = float("inf") if ignore_backoff else now
        with self.store.transaction() as conn:
            found = conn.exec_driver_sql(
                _CLAIM, {"pending": PENDING, "now": now, "due": due, "limit": limit}
            ).all()
            rows: list[Row] = []
            size = 0
            for seq, event_id, payload in found:
                size += len(payload) + 1
                if rows and size > max_bytes:
                    break
                rows.append(Row(seq, event_id, payload))
            if rows:
                seqs = as_json([r.seq for r in rows])
                conn.exec_driver_sql(_LEASE, {"owner": owner, "until": now + lease, "seqs": seqs})
            return Claim(
                rows, unreported_drops(conn), len(found) == limit or len(rows) < len(found)
            )

    def release_dead(self, now: float) -> int:
        """Release the live leases of flushers that died on this host (killed mid-batch), so
        their rows are sent now rather than when the lease runs out; return how many rows.

        An owner is ``host:pid:nonce``; a pid on another host cannot be checked, and a pid
        that still exists (or was reused) is taken as alive: the lease then simply expires.
        """
        host = socket.gethostname()
        with self.store.transaction() as conn:
            owners = conn.exec_driver_sql(_LIVE_OWNERS, {"now": now}).scalars().all()
            dead = [owner for owner in owners if _died_here(owner, host)]
            released = conn.exec_driver_sql(_FORGET_OWNERS, {"owners": orjson.dumps(dead).decode()})
            return int(released.rowcount) if dead else 0

    def settle(
        self,
        rows: Iterable[Row],
        now: float,
        keep: bool,
        reported: Mapping[str, int],
        refused: Mapping[int, str],
        attempt: Mapping[str, Any],
    ) -> None:
        """Settle one answered POST in one transaction: rows the collector accepted, the drop
        report it received, rows it refused (seq to reason: rejected, counted) and the note."""
        seqs = as_json([r.seq for r in rows])
        with self.store.transaction() as conn:
            if keep:
                conn.exec_driver_sql(_SETTLE, {"status": DELIVERED, "now": now, "seqs": seqs})
                conn.exec_driver_sql(_UNLEASE, {"seqs": seqs})
            else:
                conn.exec_driver_sql(_DELETE, {"seqs": seqs})
            for reason, n in reported.items():
                add(conn, f"reported.{reason}", n)
            if refused:
                rejected = as_json(list(refused))
                conn.exec_driver_sql(_SETTLE, {"status": REJECTED, "now": now, "seqs": rejected})
                conn.exec_driver_sql(_UNLEASE, {"seqs": rejected})
                conn.exec_driver_sql(
                    _REASON, [{"seq": s, "error": why[:500]} for s, why in refused.items()]
                )
                add(conn, "dropped.rejected", len(refused))
            note(conn, "last_attempt", attempt)

    def failed(
        self,
        rows: Iterable[Row],
        error: str,
        now: float,
        not_before: float,
        attempt: Mapping[str, Any],
    ) -> None:
        """Return rows to pending after a failed attempt, each backing off by its attempts."""
        seqs = as_json([r.seq for r in rows])
        params = {
            "error": error[:500],
            "now": now,
            "not_before": not_before,
            "jitter": random.uniform(0.8, 1.2),
            "cap": BACKOFF_MAX,
            "base": BACKOFF_BASE,
            "seqs": seqs,
        }
        with self.store.transaction() as conn:
            conn.exec_driver_sql(_FAIL, params)
            conn.exec_driver_sql(_UNLEASE, {"seqs": seqs})
            note(conn, "last_attempt", attempt)

    def release(self, rows: Iterable[Row], owner: str) -> None:
        """Give rows back without counting an attempt (the flush ran out of time)."""
        with self.store.transaction() as conn:
            conn.exec_driver_sql(_RELEASE, {"owner": owner, "seqs": as_json([r.seq for r in rows])})


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


def unreported_drops(conn: Connection) -> dict[str, int]:
    """Drops counted in the spool but not yet received by the collector, by reason."""
    values: dict[str, int] = dict(conn.exec_driver_sql("SELECT name, value FROM counters").all())
    unreported = {
        reason: values.get(f"dropped.{reason}", 0) - values.get(f"reported.{reason}", 0)
        for reason in DROP_REASONS
    }
    return {reason: n for reason, n in unreported.items() if n > 0}


def note(conn: Connection, name: str, document: Mapping[str, Any]) -> None:
    """Record a small JSON document (such as the last delivery attempt), in the caller's
    transaction."""
    conn.exec_driver_sql(_NOTE, {"name": name, "value": orjson.dumps(document).decode()})


def as_json(seqs: list[int]) -> str:
    return orjson.dumps(seqs).decode()


def add(conn: Connection, name: str, n: int) -> None:
    """Add ``n`` to a counter, inside the caller's transaction."""
    if n:
        conn.exec_driver_sql(_ADD, {"name": name, "n": n})
