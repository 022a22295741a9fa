"""Checkpoints: copying the WAL into the database file, so that the WAL starts over and the
files stay within the size bound.

SQLite's automatic checkpoint is off (it would run inside whichever ``track()`` crossed its
threshold): the maintenance thread checkpoints passively beside the inserts, catches up under a
burst, and truncates when the bound needs the room; bulk transactions checkpoint every few.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from .sql import WAL_FRAME_HEADER, pragma

if TYPE_CHECKING:
    from .store import Store

# How long (ms) a truncating checkpoint waits for other processes' readers and writers.
TRUNCATE_WAIT_MS = 100
# The catch-up repeats passive checkpoints until one finds at most this many new frames.
CATCH_UP_FRAMES = 64
CATCH_UP_PASSES = 8
# Bulk transactions (an import's or a delivery's batches) each rewrite thousands of rows; a
# checkpoint (which syncs the database file) after every few, not after each, keeps the WAL
# within a few MiB without a sync per transaction. Left to grow, the WAL costs every reader.
BULK_CHECKPOINT_EVERY = 8


class Checkpoints:
    """The checkpoints of one store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._bulk_commits = 0

    def run(self, truncate: bool = False, now: bool = False) -> bool:
        """Copy the WAL into the database file, keeping the WAL file small; False when a
        reader of another process kept it from copying everything.

        ``truncate`` also empties the WAL file, holding writers off while it does (see
        :meth:`_truncate`: a reader on the WAL in another process may put it off). ``now``
        does the same without first trying a passive pass: for a caller at the size bound.

        One checkpoint at a time on the host (the store's ``checkpointer`` lock): a routine one
        finds another running and skips; ``truncate`` and ``now`` wait for it.
        """
        store = self._store
        with store.reading():
            pass  # first: opening the spool makes its directory, where the lock file goes
        wait = store.settings.lock_timeout if truncate or now else 0.0
        with store.checkpointer.held(wait) as held:
            return not held or self._checkpoint(truncate, now)

    def _checkpoint(self, truncate: bool, now: bool) -> bool:
        with self._store.reading() as connection:
            # Beside track()'s inserts: copies what the WAL holds now, never blocks them.
            frames = 0 if now else _passive(connection)
            if truncate or now:
                return self._truncate(connection)
            if (
                frames * (pragma(connection, "page_size") + WAL_FRAME_HEADER)
                >= self._store.wal_limit
            ):
                return self._catch_up(connection, frames)
            return True

    def bulk_committed(self) -> None:
        """Count one bulk transaction, and checkpoint after every few."""
        self._bulk_commits += 1
        if self._bulk_commits % BULK_CHECKPOINT_EVERY == 0:
            self.run()

    def _truncate(self, connection: sqlite3.Connection) -> bool:
        """Copy all of the WAL and empty its file (the size bound counts it), holding the
        inserts off; True when it was done.

        This needs SQLite's write lock: holding the gate and the writers' turn hands it over at
        once, where SQLite's busy handler would sleep and lose races to the inserts. It
        also waits for readers to leave the WAL, and the inserts wait with it: only briefly, so
        that a reader holding a snapshot (another process) delays the start-over instead.
        """
        store = self._store
        with store.gate(), store.writers_turn():
            connection.execute(f"PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}").close()
            try:
                busy, _frames, _copied = connection.execute(
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                ).fetchone()
                return not busy
            finally:
                waits = int(store.settings.lock_timeout * 1000)
                connection.execute(f"PRAGMA busy_timeout = {waits}").close()

    def _catch_up(self, connection: sqlite3.Connection, frames: int) -> bool:
        """Let the WAL start over, under a burst of inserts, with writers held off briefly;
        False when a reader of another process kept it from copying everything.

        The WAL starts over at the first commit after a checkpoint copied all of it, but under a
        burst every passive checkpoint ends behind the inserts, so the WAL only grows. Each pass
        here copies what came in during the last; once little is left, a last pass copies the
        rest with every writer held off.
        """
        for _ in range(CATCH_UP_PASSES):
            previous, frames = frames, _passive(connection)
            if frames - previous <= CATCH_UP_FRAMES:
                break
        with self._store.write():  # every writer held off: this process's by the gate, the others'
            # by SQLite's write lock, which a passive checkpoint does not need. Unlike RESTART it
            # never waits for readers: with one still on the WAL (inspect), the WAL grows on.
            _busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(frames == copied)


def _passive(connection: sqlite3.Connection) -> int:
    """A passive checkpoint; how many frames the WAL held when it started."""
    _busy, frames, _copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return max(0, int(frames))
