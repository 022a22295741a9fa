"""The spool's schema revision, read in one query on the driver's connection (opening a current
spool does without SQLAlchemy) and checked against what this code knows."""

from __future__ import annotations

import sqlite3

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


def check_known(revision: str | None) -> None:
    """Raise SchemaTooNew for a revision this code does not know."""
    if revision is not None and revision not in schema.REVISIONS:
        raise SchemaTooNew(
            f"the spool's schema revision {revision!r} is newer than this sqreen-spool knows "
            f"(latest known: {schema.HEAD!r}); upgrade sqreen-spool, or point SQREEN_SPOOL_PATH "
            "at another file"
        )
