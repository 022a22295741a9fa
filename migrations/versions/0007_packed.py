"""Packed payloads: zstd with a dictionary trained on the spool's own events.

New rows hold their id as the UUID's 16 bytes, not its 36 characters of text. ``packing``
names the dictionary a row's payload was packed with (NULL: stored as sent, to be
repacked once the spool has a dictionary; 0: stored as sent for good). ``dictionaries`` holds
them, never changed once written. Rows already in the spool stay as sent; the maintenance
thread repacks them in steps of a few hundred rows (see ``sqreen.storage.packing``), found
through a partial index that holds only rows stored as sent, so that packed inserts never
touch it.

Revision ID: 0007_packed
Revises: 0006_security
"""

from alembic import op

revision = "0007_packed"
down_revision = "0006_security"
# Breaking: an older release would send a packed payload as it is (docs/storage.md).
additive = False
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN packing INTEGER")
    op.execute(
        "CREATE TABLE dictionaries (id INTEGER NOT NULL, trained_at FLOAT NOT NULL, "
        "data BLOB NOT NULL, PRIMARY KEY (id))"
    )
    op.execute("CREATE INDEX events_unpacked ON events (seq) WHERE packing IS NULL")


def downgrade() -> None:
    # Back to payloads as sent: refused while any row is packed (they would be unreadable
    # without their dictionaries). Deliver or purge them first.
    packed = op.get_bind().exec_driver_sql("SELECT count(*) FROM events WHERE packing > 0")
    if packed.scalar():
        raise RuntimeError("packed events are still in the spool: deliver or purge them first")
    # Ids back to their text, as releases before this one store them.
    op.execute(
        "UPDATE events SET id = lower(substr(hex(id), 1, 8) || '-' || substr(hex(id), 9, 4) || "
        "'-' || substr(hex(id), 13, 4) || '-' || substr(hex(id), 17, 4) || '-' || "
        "substr(hex(id), 21)) WHERE typeof(id) = 'blob'"
    )
    op.execute("DROP INDEX events_unpacked")
    op.execute("DROP TABLE dictionaries")
    op.execute("ALTER TABLE events DROP COLUMN packing")
