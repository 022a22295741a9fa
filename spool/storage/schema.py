"""The schema revisions this code knows, and the row states it stores.

Plain constants, for the hot path and everything else: the tables as SQLAlchemy sees them are in
:mod:`.tables`, which only migrations' tests and the operator's tools import.
"""

from __future__ import annotations

# Oldest first; the last one is the revision this code reads and writes.
REVISIONS = ("0001_events", "0002_delivery", "0003_claims", "0004_settled", "0005_actions")
HEAD = REVISIONS[-1]

# Row states. Integers keep the hot-path insert and the pending index small.
PENDING = 0
DELIVERED = 1
REJECTED = 2
STATUSES = {"pending": PENDING, "delivered": DELIVERED, "rejected": REJECTED}
STATUS_NAMES = {code: name for name, code in STATUSES.items()}
