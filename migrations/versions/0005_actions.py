"""Security responses: the actions every process on the spool enforces.

The collector's list (replaced whole by each answer that carries one) and an operator's actions
(from ``sqreen-spool actions``) live side by side, told apart by ``source``, so that a reload of
the collector's list never erases an operator's. ``expires_at`` is absolute (Unix seconds).
Every change also bumps the counter ``actions.version``, which processes poll to reload.

Revision ID: 0005_actions
Revises: 0004_settled
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_actions"
down_revision = "0004_settled"
# Additive: a release that knows the revision before can keep writing (docs/storage.md).
additive = True
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "actions",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("action_id", sa.Text, primary_key=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("send_response", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("actions")
