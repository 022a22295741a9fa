"""An operator's changes to a spool: putting events back in line, deleting them.

Each is one ``BEGIN IMMEDIATE`` transaction, safe while an application writes and flushes the
same spool: a row that a flusher holds is settled by whichever of the two commits last.
"""

from __future__ import annotations

from ..storage.counters import add
from ..storage.schema import DELIVERED, PENDING
from ..storage.store import Store
from .selection import Selection

_SELECTED = "SELECT seq FROM events WHERE {where}"
# Back in line with a clean slate: no backoff, no attempt count, no rejection reason.
_REQUEUE = "UPDATE events SET status = :pending, settled_at = NULL WHERE seq IN ({selected})"
_FORGET_RETRIES = "DELETE FROM retries WHERE seq IN ({selected})"
_COUNT_UNDELIVERED = (
    "SELECT count(*) FROM events WHERE seq IN ({selected}) AND status != :delivered"
)
_PURGE = "DELETE FROM events WHERE seq IN ({selected})"


def requeue(store: Store, selection: Selection) -> int:
    """Put the selected settled events back to pending; return how many."""
    where, params = selection.where()
    selected = _SELECTED.format(where=where)
    with store.write() as conn:
        # Retries first: the update below changes which rows the selection matches.
        conn.execute(_FORGET_RETRIES.format(selected=selected), params)
        moved = conn.execute(
            _REQUEUE.format(selected=selected), {**params, "pending": PENDING}
        ).rowcount
    return int(moved)


def purge(store: Store, selection: Selection) -> int:
    """Delete the selected events; return how many.

    Undelivered ones (pending or rejected) are counted as dropped with reason ``purged``, so the
    collector hears of them in the next batch; delivered ones were not lost and are not counted.
    """
    where, params = selection.where()
    selected = _SELECTED.format(where=where)
    with store.write() as conn:
        undelivered = conn.execute(
            _COUNT_UNDELIVERED.format(selected=selected), {**params, "delivered": DELIVERED}
        ).fetchone()[0]
        deleted = conn.execute(_PURGE.format(selected=selected), params).rowcount
        add(conn, "dropped.purged", int(undelivered))
    return int(deleted)
