"""The spool's tables, as SQLAlchemy Core sees them.

Migrations in ``sqreen.migrations`` create and alter these tables; they do not import this module,
so an old migration keeps meaning what it meant when it was written. The tests compare these
tables with a migrated spool (Alembic's autogenerate), so the two cannot drift apart. Imported
only by those tests and the operator's tools: SQLAlchemy is not on ``import sqreen``'s path.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, Table, Text

metadata = MetaData()

events = Table(
    "events",
    metadata,
    # The rowid: insertion order, so "oldest first" is an index scan.
    Column("seq", Integer, primary_key=True),
    # The delivery id (a UUID). Not indexed: an index on random keys would double the pages each
    # insert writes; lookups by id are rare and operator-driven.
    Column("id", Text, nullable=False),
    Column("name", Text, nullable=False),
    # Unix seconds at which the event entered the spool (not its event timestamp).
    Column("enqueued_at", Float, nullable=False),
    # The event exactly as the collector receives it (JSON, encoded once by track()).
    Column("payload", LargeBinary, nullable=False),
    Column("status", Integer, nullable=False, server_default="0"),
    # When the row became delivered or rejected.
    Column("settled_at", Float),
    # 1 for a security event (kept longest, sent first; see sqreen.priority), 0 for analytics.
    Column("security", Integer, nullable=False, server_default="0"),
    # The dictionary the payload was packed with; NULL or 0: stored as sent (sqreen's packing).
    Column("packing", Integer),
)

# The dictionaries payloads are packed with (see sqreen.storage.packing), never changed.
dictionaries = Table(
    "dictionaries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("trained_at", Float, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# A flusher's claim on a batch: no pending row with a seq from ``lo`` to ``hi`` (the batch's
# first and last) is claimed again until the claim is released or ``expires``.
claims = Table(
    "claims",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("lo", Integer, nullable=False),
    Column("hi", Integer, nullable=False),
    Column("expires", Float, nullable=False),
)

# Retry state, kept in the spool so that a restarted process keeps its backoff. A rejected
# event's reason is its last_error.
retries = Table(
    "retries",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_error", Text),
)

# Cumulative counts kept in the spool itself: "dropped.<reason>" and "reported.<reason>".
counters = Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Integer, nullable=False),
)

# Small JSON documents about the spool's life, such as the last delivery attempt.
notes = Table(
    "notes",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)


# Security responses to enforce, from the collector's answers and from an operator.
actions = Table(
    "actions",
    metadata,
    Column("source", Text, primary_key=True),
    Column("action_id", Text, primary_key=True),
    Column("action", Text, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("send_response", Integer, nullable=False),
    Column("expires_at", Float),
    Column("received_at", Float, nullable=False),
)
