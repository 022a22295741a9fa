"""Claims by span: one row per claimed batch instead of one lease row per event.

A per-event lease cost a thousand rows written when a batch was claimed and a thousand deleted
when it settled, about a quarter of a delivery's WAL pages. A claim holds the span of seqs from
its batch's first row to its last. Leases live at the upgrade become one-row claims.

Revision ID: 0003_claims
Revises: 0002_delivery
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003_claims"
down_revision = "0002_delivery"
# Breaking: an older release cannot write a spool migrated past it (docs/storage.md).
additive = False
branch_labels = None
depends_on = None

# Rows a claim's span covers but that the claim skipped (backing off, or another flusher's) are
# shown with the owner of the latest claim covering them: none of them can be claimed meanwhile.
_VIEW = (
    "CREATE VIEW event_state AS SELECT events.*, claims.owner AS lease_owner, "
    "coalesce(claims.expires, 0) AS lease_expires, coalesce(retries.attempts, 0) AS attempts, "
    "coalesce(retries.next_attempt_at, 0) AS next_attempt_at, retries.last_error FROM events "
    "LEFT JOIN claims ON claims.id = (SELECT id FROM claims WHERE events.seq BETWEEN lo AND hi "
    "ORDER BY expires DESC LIMIT 1) LEFT JOIN retries USING (seq)"
)
_OLD_VIEW = (
    "CREATE VIEW event_state AS SELECT events.*, leases.owner AS lease_owner, "
    "coalesce(leases.expires, 0) AS lease_expires, coalesce(retries.attempts, 0) AS attempts,"
    " coalesce(retries.next_attempt_at, 0) AS next_attempt_at, retries.last_error "
    "FROM events LEFT JOIN leases USING (seq) LEFT JOIN retries USING (seq)"
)


def upgrade() -> None:
    _replace(
        "leases",
        "claims",
        [
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("lo", sa.Integer, nullable=False),
            sa.Column("hi", sa.Integer, nullable=False),
            sa.Column("expires", sa.Float, nullable=False),
        ],
        "INSERT INTO claims (owner, lo, hi, expires) SELECT owner, seq, seq, expires FROM leases",
        "DELETE FROM retries WHERE seq = old.seq;",
        _VIEW,
    )


def downgrade() -> None:
    _replace(
        "claims",
        "leases",
        [
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("expires", sa.Float, nullable=False),
        ],
        "INSERT OR REPLACE INTO leases (seq, owner, expires) SELECT events.seq, claims.owner, "
        "claims.expires FROM claims JOIN events ON events.seq BETWEEN claims.lo AND claims.hi "
        "ORDER BY claims.expires",
        "DELETE FROM leases WHERE seq = old.seq; DELETE FROM retries WHERE seq = old.seq;",
        _OLD_VIEW,
    )


def _replace(
    old: str, new: str, columns: list[sa.Column[Any]], copy: str, forget: str, view: str
) -> None:
    """Replace table ``old`` by ``new`` (``copy`` moves the rows over); the trigger and the
    view that name the claim table are dropped first and made again with it."""
    op.execute("DROP VIEW event_state")
    op.execute("DROP TRIGGER events_forget")
    op.create_table(new, *columns)
    op.execute(copy)
    op.drop_table(old)
    op.execute(f"CREATE TRIGGER events_forget AFTER DELETE ON events BEGIN {forget} END")
    op.execute(view)
