"""What a spool holds and has done, for metrics: :meth:`sqreen.Spooler.stats`.

Read from the spool itself (one plain query per figure, no SQLAlchemy), so that every process on
the spool, and an operator's, see the same: pending, leased and rejected events, the oldest
pending event's age (the delivery lag), the running totals of delivered and dropped events,
failures by kind, the last delivery, and the files' size against the bound. Adapters for
Prometheus and OpenTelemetry are in :mod:`sqreen.metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from . import clock
from .storage.counters import dropped, dropped_security, failures
from .storage.schema import PENDING, REJECTED
from .storage.store import Store

# Events by state, and how many pending ones a flusher holds now (also what inspect shows).
COUNTS = (
    "SELECT status, count(*), coalesce(sum(lease_expires > :now), 0) FROM event_state "
    "GROUP BY status"
)
_OLDEST = "SELECT min(enqueued_at) FROM events WHERE status = ?"


@dataclass(frozen=True)
class Stats:
    """One look at a spool (counts of events; ages and times in seconds, Unix times)."""

    pending: int = 0
    leased: int = 0
    rejected: int = 0
    oldest_pending_age: float | None = None  # the delivery lag: how long the oldest has waited
    delivered: int = 0  # running totals, since the spool was made
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_security: dict[str, int] = field(default_factory=dict)  # the security events among them
    failures: dict[str, int] = field(default_factory=dict)
    last_delivery: dict[str, Any] | None = None  # at, events, outcome, status, error
    file_bytes: int = 0
    max_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_stats(store: Store) -> Stats:
    """The spool's stats now."""
    now = clock.now()
    with store.reading() as connection:
        counts = {
            status: (n, leased) for status, n, leased in connection.execute(COUNTS, {"now": now})
        }
        oldest = connection.execute(_OLDEST, (PENDING,)).fetchone()[0]
        counters = dict(connection.execute("SELECT name, value FROM counters").fetchall())
        note = connection.execute("SELECT value FROM notes WHERE name = 'last_attempt'").fetchone()
    pending, leased = counts.get(PENDING, (0, 0))
    return Stats(
        pending=pending,
        leased=leased,
        rejected=counts.get(REJECTED, (0, 0))[0],
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        delivered=int(counters.get("delivered", 0)),
        dropped=dropped(counters),
        dropped_security=dropped_security(counters),
        failures=failures(counters),
        last_delivery=None if note is None else orjson.loads(note[0]),
        file_bytes=store.file_bytes(),
        max_bytes=store.settings.max_bytes,
    )
