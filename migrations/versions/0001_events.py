"""The events table.

Revision ID: 0001_events
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_events"
down_revision = None
# Breaking: an older release cannot write a spool migrated past it (docs/storage.md).
additive = False
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("enqueued_at", sa.Float, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("events")
