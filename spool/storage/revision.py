"""The spool's schema revision, read in one query on the driver's connection (opening a current
spool does without SQLAlchemy) and checked against what this code knows."""

from __future__ import annotations

import sqlite3

import orjson

from ..errors import SchemaTooNew
from . import schema
from .failures import SQLITE_ERROR, sqlite_code
from .sql import scalar


def read_revision(connection: sqlite3.Connection) -> str | None:
    """The spool's schema revision, in one query; None for a spool with no schema yet."""
    revision: str | None
    try:
        revision = scalar(connection, "SELECT version_num FROM alembic_version")
        return revision
    except sqlite3.OperationalError as exc:
        if sqlite_code(exc) != SQLITE_ERROR:  # "no such table" is SQLITE_ERROR
            raise
        has_table = scalar(
            connection,
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'",
        )
        if not has_table:
            return None
    # Another process created the table between the two queries (opening a new spool at once):
    # read it again, and let any other failure raise.
    revision = scalar(connection, "SELECT version_num FROM alembic_version")
    return revision


def oldest_writer(connection: sqlite3.Connection) -> str | None:
    """The oldest revision that may still write this spool, as its last migration recorded
    it; None when none did (a spool from before the rule)."""
    try:
        note = scalar(connection, "SELECT value FROM notes WHERE name = ?", schema.COMPAT_NOTE)
    except sqlite3.OperationalError:  # no notes table: a spool older than the rule
        return None
    if note is None:
        return None
    found = orjson.loads(note).get("min_writer")
    return found if isinstance(found, str) else None


def writable(revision: str | None, oldest_writer: str | None) -> bool:
    """Whether this release may write a spool at ``revision``: it knows the revision, or a
    newer release migrated it additively past one it knows (``oldest_writer``)."""
    return revision is None or revision in schema.REVISIONS or oldest_writer in schema.REVISIONS


def check_known(revision: str | None, oldest_writer: str | None = None) -> None:
    """Raise SchemaTooNew for a revision this release may not write (see :func:`writable`)."""
    if not writable(revision, oldest_writer):
        raise SchemaTooNew(
            f"the spool's schema revision {revision!r} is newer than this sqreen-spool knows "
            f"(latest known: {schema.HEAD!r}); upgrade sqreen-spool, or point SQREEN_SPOOL_PATH "
            "at another file"
        )
