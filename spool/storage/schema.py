"""The schema revisions this code knows, and the row states it stores.

Plain constants, for the hot path and everything else: the tables as SQLAlchemy sees them are in
:mod:`.tables`, which only migrations' tests and the operator's tools import.
"""

from __future__ import annotations

# Oldest first; the last one is the revision this code reads and writes.
REVISIONS = ("0001_events", "0002_delivery", "0003_claims", "0004_settled", "0005_actions",
             "0006_security", "0007_packed")  # fmt: skip
HEAD = REVISIONS[-1]
# The revisions whose migration is additive (``additive = True`` in its file, which a test
# checks): a release that knows the revision before one of them can keep writing a spool
# migrated past it. The others are breaking.
ADDITIVE = frozenset({"0004_settled", "0005_actions", "0006_security"})


def min_writer(revision: str) -> str:
    """The oldest revision whose release may write a spool at ``revision`` (a known one): the
    last breaking migration up to it."""
    upto = REVISIONS[: REVISIONS.index(revision) + 1]
    return next(r for r in reversed(upto) if r not in ADDITIVE)


# Kept in the spool's notes by every migration: a release that does not know the spool's
# revision (a newer one migrated it) may still write it if it knows this one.
COMPAT_NOTE = "schema"

# Row states. Integers keep the hot-path insert and the pending index small.
PENDING = 0
DELIVERED = 1
REJECTED = 2
STATUSES = {"pending": PENDING, "delivered": DELIVERED, "rejected": REJECTED}
STATUS_NAMES = {code: name for name, code in STATUSES.items()}
