"""Delivery state on each event (leases, retries, outcome) and the spool's own counters.

Revision ID: 0002_delivery
Revises: 0001_events
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_delivery"
down_revision = "0001_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text, nullable=True))
        batch.add_column(sa.Column("lease_expires", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.Text, nullable=True))
        batch.add_column(sa.Column("settled_at", sa.Float, nullable=True))
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
    op.drop_table("notes")
    op.drop_table("counters")
    with op.batch_alter_table("events") as batch:
        for column in (
            "settled_at",
            "last_error",
            "next_attempt_at",
            "attempts",
            "lease_expires",
            "lease_owner",
        ):
            batch.drop_column(column)
