"""Event classes: security events are kept longest and sent first.

``security`` is 1 for an event of the security class (the library's own login, signup and
security-response events, the names a collector marks urgent, the names the application lists
in ``SQREEN_SPOOL_SECURITY_EVENTS``), decided once by the process that tracked it. Under size
pressure the bound drops analytics first; delivery claims security rows first, through a partial
index that holds only pending security rows, so inserts of analytics events never touch it.

Rows already in the spool are classed by the library's own names; the application's names are
known only to its processes.

Revision ID: 0006_security
Revises: 0005_actions
"""

from alembic import op

revision = "0006_security"
down_revision = "0005_actions"
# Additive: an older release inserts without the column (analytics, its default) and ignores it
# when it cuts or delivers (docs/storage.md).
additive = True
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN security INTEGER NOT NULL DEFAULT 0")
    op.execute(
        "UPDATE events SET security = 1 WHERE name IN ('sqreen.auth_track', "
        "'sqreen.signup_track') OR name LIKE 'sq.action.%'"
    )
    op.execute("CREATE INDEX events_security ON events (seq) WHERE security = 1 AND status = 0")


def downgrade() -> None:
    op.execute("DROP INDEX events_security")
    op.execute("ALTER TABLE events DROP COLUMN security")
