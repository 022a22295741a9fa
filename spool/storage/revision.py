"""The spool's schema revision: read in one query, checked against what this code knows, and
brought up to date (Alembic is imported only then: it costs ~150 ms)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import SchemaTooNew
from . import schema
from .failures import SQLITE_ERROR, sqlite_code

if TYPE_CHECKING:  # the callers hold SQLAlchemy objects: it is imported by then
    from sqlalchemy import Connection, Engine


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds SQLite's write lock from its first statement."""
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def read_revision(conn: Connection) -> str | None:
    """The spool's schema revision, in one query; None for a spool with no schema yet."""
    from sqlalchemy.exc import DBAPIError

    try:
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError as exc:
        if sqlite_code(exc) != SQLITE_ERROR:  # "no such table" is SQLITE_ERROR
            raise
        has_table = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).scalar()
        if not has_table:
            return None
    # Another process created the table between the two queries (opening a new spool at once):
    # read it again, and let any other failure raise.
    revision: str | None = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return revision


def ensure_schema(engine: Engine) -> None:
    """Bring the spool to the schema this code knows, importing Alembic only if needed."""
    with engine.connect() as conn:
        revision = read_revision(conn)
    if revision == schema.HEAD:
        return
    check_known(revision)
    from .migrate import upgrade

    upgrade(engine)


def check_known(revision: str | None) -> None:
    """Raise SchemaTooNew for a revision this code does not know."""
    if revision is not None and revision not in schema.REVISIONS:
        raise SchemaTooNew(
            f"the spool's schema revision {revision!r} is newer than this sqreen-spool knows "
            f"(latest known: {schema.HEAD!r}); upgrade sqreen-spool, or point SQREEN_SPOOL_PATH "
            "at another file"
        )
