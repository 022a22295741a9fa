"""Schema migrations through Alembic (with SQLAlchemy, ~250 ms of imports), imported only when
the spool's schema is not current."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine

from . import schema
from .counters import note
from .revision import check_known, oldest_writer, read_revision
from .sql import driver


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Upgrade the spool to the latest revision; return the revisions before and after.

    The whole upgrade runs in one ``BEGIN IMMEDIATE`` transaction: processes that open a new spool
    at once queue on SQLite's write lock, and all but the first find the work done.
    """
    with _write_transaction(engine) as conn:
        before = read_revision(driver(conn))
        if before is not None and before not in schema.REVISIONS:
            # Migrated by a newer release while this one waited for the lock (two releases
            # opening a new spool at once): writable if additive, and not this one's to touch.
            check_known(before, oldest_writer(driver(conn)))
            return before, before
        config = Config()
        config.set_main_option("script_location", str(files("sqreen.migrations")))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        after = read_revision(driver(conn))
        assert after is not None
        # The oldest release that may still write it: the last breaking migration's.
        compat = {"revision": after, "min_writer": schema.min_writer(after)}
        note(driver(conn), schema.COMPAT_NOTE, compat)
    return before, after


@contextlib.contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds SQLite's write lock from its first statement."""
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
