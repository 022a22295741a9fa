"""A partial index of settled rows (delivered, rejected), for the size bound.

The size bound drops settled rows before pending ones, oldest first. Without an index, finding
them scanned the whole table, even when there were none; inserts are pending rows, which this
index leaves out, so it costs the hot path nothing.

Revision ID: 0004_settled
Revises: 0003_claims
"""

from alembic import op

revision = "0004_settled"
down_revision = "0003_claims"
# Additive: a release that knows the revision before can keep writing (docs/storage.md).
additive = True
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX events_settled ON events (status, seq) WHERE status > 0")


def downgrade() -> None:
    op.execute("DROP INDEX events_settled")
