"""Delivery state (leases, retries, outcomes) and the spool's own counters and notes.

Leases and retry state live in small side tables keyed by the event's seq, not as columns of
``events``: claiming or failing a batch then writes a few small rows instead of rewriting every
event of the batch (with page splits, as the rows grow) into the WAL.

Revision ID: 0002_delivery
Revises: 0001_events
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_delivery"
down_revision = "0001_events"
# Breaking: an older release cannot write a spool migrated past it (docs/storage.md).
additive = False
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("settled_at", sa.Float, nullable=True))
    op.create_table(
        "leases",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
    )
    op.create_table(
        "retries",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.execute(
        "CREATE TRIGGER events_forget AFTER DELETE ON events BEGIN "
        "DELETE FROM leases WHERE seq = old.seq; DELETE FROM retries WHERE seq = old.seq; END"
    )
    op.execute(
        "CREATE VIEW event_state AS SELECT events.*, leases.owner AS lease_owner, "
        "coalesce(leases.expires, 0) AS lease_expires, coalesce(retries.attempts, 0) AS attempts,"
        " coalesce(retries.next_attempt_at, 0) AS next_attempt_at, retries.last_error "
        "FROM events LEFT JOIN leases USING (seq) LEFT JOIN retries USING (seq)"
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.create_table(
        "notes",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.execute("DROP VIEW event_state")
    op.execute("DROP TRIGGER events_forget")
    for table in ("notes", "counters", "retries", "leases"):
        op.drop_table(table)
    with op.batch_alter_table("events") as batch:
        batch.drop_column("settled_at")
