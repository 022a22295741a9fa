"""Delivery state on the spool's rows: claims (leases), outcomes, drop counters, notes.

Every change here is one short ``BEGIN IMMEDIATE`` transaction through :meth:`Store.transaction`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, bindparam, text

from .schema import DELIVERED, DROP_REASONS, PENDING, REJECTED
from .store import Store

# Row-level backoff after a failed delivery: 5 s, 10 s, 20 s, ... capped at an hour, jittered.
BACKOFF_BASE = 5.0
BACKOFF_MAX = 3600.0

_CLAIM = text(
    "SELECT events.seq, events.id, events.payload FROM events "
    "LEFT JOIN leases USING (seq) LEFT JOIN retries USING (seq) "
    "WHERE events.status = :pending AND coalesce(leases.expires, 0) <= :now "
    "AND coalesce(retries.next_attempt_at, 0) <= :due ORDER BY events.seq LIMIT :limit"
)
_LEASE = text("INSERT OR REPLACE INTO leases (seq, owner, expires) VALUES (:seq, :owner, :until)")
_UNLEASE = text("DELETE FROM leases WHERE seq IN :seqs").bindparams(
    bindparam("seqs", expanding=True)
)
# Deleting an event also deletes its lease and retry rows (trigger events_forget).
_DELETE = text("DELETE FROM events WHERE seq IN :seqs").bindparams(
    bindparam("seqs", expanding=True)
)
_SETTLE = text(
    "UPDATE events SET status = :status, settled_at = :now WHERE seq IN :seqs"
).bindparams(bindparam("seqs", expanding=True))
# Each event backs off by its own attempt count: BACKOFF_BASE * 2^attempts, capped, jittered,
# and never sooner than the collector's Retry-After.
_FAIL = text(
    "INSERT INTO retries (seq, attempts, next_attempt_at, last_error) "
    "VALUES (:seq, 1, max(:not_before, :now + :jitter * :base), :error) "
    "ON CONFLICT (seq) DO UPDATE SET attempts = attempts + 1, last_error = excluded.last_error, "
    "next_attempt_at = max(:not_before, :now + :jitter * "
    "min(:cap, :base * (1 << min(retries.attempts, 20))))"
)
_REASON = text(
    "INSERT INTO retries (seq, attempts, next_attempt_at, last_error) VALUES (:seq, 0, 0, :error) "
    "ON CONFLICT (seq) DO UPDATE SET last_error = excluded.last_error"
)
_RELEASE = text("DELETE FROM leases WHERE seq IN :seqs AND owner = :owner").bindparams(
    bindparam("seqs", expanding=True)
)
_ADD = text(
    "INSERT INTO counters (name, value) VALUES (:name, :n) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_NOTE = text(
    "INSERT INTO notes (name, value) VALUES (:name, :value) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


class Row(NamedTuple):
    """A claimed event: its position, delivery id and wire bytes."""

    seq: int
    id: str
    payload: bytes


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
    ) -> list[Row]:
        """Lease up to ``limit`` due pending rows (at most ``max_bytes`` of payload), oldest first.

        Rows leased by another flusher are skipped until their lease expires, so two flushers
        never post the same rows at once, and rows of a flusher that died are retried later.
        """
        with self.store.transaction() as conn:
            found = conn.execute(
                _CLAIM,
                {
                    "pending": PENDING,
                    "now": now,
                    "due": float("inf") if ignore_backoff else now,
                    "limit": limit,
                },
            ).all()
            rows: list[Row] = []
            size = 0
            for seq, event_id, payload in found:
                size += len(payload) + 1
                if rows and size > max_bytes:
                    break
                rows.append(Row(seq, event_id, payload))
            if rows:
                until = now + lease
                conn.execute(_LEASE, [{"seq": r.seq, "owner": owner, "until": until} for r in rows])
        return rows

    def delivered(
        self, rows: Iterable[Row], now: float, keep: bool, reported: Mapping[str, int]
    ) -> None:
        """Settle rows the collector accepted, and count the drop report it received."""
        seqs = [r.seq for r in rows]
        with self.store.transaction() as conn:
            if keep:
                conn.execute(_SETTLE, {"status": DELIVERED, "now": now, "seqs": seqs})
                conn.execute(_UNLEASE, {"seqs": seqs})
            else:
                conn.execute(_DELETE, {"seqs": seqs})
            for reason, n in reported.items():
                add(conn, f"reported.{reason}", n)

    def rejected(self, rows: Mapping[int, str], now: float) -> None:
        """Move rows the collector refused (seq to reason) to the rejected state, counted."""
        seqs = list(rows)
        with self.store.transaction() as conn:
            conn.execute(_SETTLE, {"status": REJECTED, "now": now, "seqs": seqs})
            conn.execute(_UNLEASE, {"seqs": seqs})
            conn.execute(_REASON, [{"seq": s, "error": why[:500]} for s, why in rows.items()])
            add(conn, "dropped.rejected", len(rows))

    def failed(self, rows: Iterable[Row], error: str, now: float, not_before: float = 0) -> None:
        """Return rows to pending after a failed attempt, each backing off by its attempts."""
        seqs = [r.seq for r in rows]
        common = {
            "error": error[:500],
            "now": now,
            "not_before": not_before,
            "jitter": random.uniform(0.8, 1.2),
            "cap": BACKOFF_MAX,
            "base": BACKOFF_BASE,
        }
        with self.store.transaction() as conn:
            conn.execute(_FAIL, [common | {"seq": seq} for seq in seqs])
            conn.execute(_UNLEASE, {"seqs": seqs})

    def release(self, rows: Iterable[Row], owner: str) -> None:
        """Give rows back without counting an attempt (the flush ran out of time)."""
        with self.store.transaction() as conn:
            conn.execute(_RELEASE, {"owner": owner, "seqs": [r.seq for r in rows]})

    def unreported_drops(self) -> dict[str, int]:
        """Drops counted in the spool but not yet received by the collector, by reason."""
        with self.store.connection() as conn:
            values: dict[str, int] = dict(
                conn.exec_driver_sql("SELECT name, value FROM counters").all()
            )
        unreported = {
            reason: values.get(f"dropped.{reason}", 0) - values.get(f"reported.{reason}", 0)
            for reason in DROP_REASONS
        }
        return {reason: n for reason, n in unreported.items() if n > 0}

    def note(self, name: str, document: Mapping[str, Any]) -> None:
        """Record a small JSON document (such as the last delivery attempt) in the spool."""
        with self.store.transaction() as conn:
            conn.execute(_NOTE, {"name": name, "value": orjson.dumps(document).decode()})


def add(conn: Connection, name: str, n: int) -> None:
    """Add ``n`` to a counter, inside the caller's transaction."""
    if n:
        conn.execute(_ADD, {"name": name, "n": n})
