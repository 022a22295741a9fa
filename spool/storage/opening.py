"""Opening the spool file: the engine, each connection's settings, the schema brought up to
date, a damaged file moved aside.

Connections run in the driver's autocommit mode (a lone statement is its own transaction; the
store's writes issue ``BEGIN IMMEDIATE``), with SQLite's automatic checkpoint off (see
:mod:`.checkpoints`), ``synchronous`` by the durability setting, and the WAL journal. A new file
takes 2 KiB pages and incremental vacuum first.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from .failures import CORRUPT_CODES, sqlite_code
from .files import prepare_path, quarantine
from .revision import ensure_schema, read_revision
from .sql import pragma

if TYPE_CHECKING:  # SQLAlchemy is imported when a spool is opened, not with sqreen
    from sqlalchemy import Engine

log = logging.getLogger("sqreen.spool")

PAGE_SIZE = 2048
_SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}


def open_engine(path: Path, settings: Settings, wal_limit: int) -> Engine:
    """The spool at ``path`` opened, made or migrated as needed; a damaged file is moved aside
    (see :func:`.files.quarantine`) and a fresh spool started in its place."""
    from sqlalchemy.exc import DBAPIError

    prepare_path(path)
    engine = create_engine(path, settings, wal_limit)
    try:
        ensure_schema(engine)
    except DBAPIError as exc:
        engine.dispose()
        if sqlite_code(exc) not in CORRUPT_CODES:
            raise
        moved = quarantine(path)
        log.error(
            "spool %s is not a readable SQLite database (%s); moved it to %s and "
            "started a fresh spool",
            path,
            exc.orig,
            moved,
        )
        prepare_path(path)
        engine = create_engine(path, settings, wal_limit)
        ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def create_engine(path: Path, settings: Settings, wal_limit: int) -> Engine:
    """An engine on ``path`` whose every connection is configured for the spool (see the
    module docstring); it opens nothing yet."""
    from sqlalchemy import create_engine as sqlalchemy_engine
    from sqlalchemy import event
    from sqlalchemy.engine import URL

    engine = sqlalchemy_engine(
        URL.create("sqlite", database=str(path)),
        connect_args={"timeout": settings.lock_timeout, "check_same_thread": False},
    )
    synchronous = _SYNCHRONOUS[settings.durability]

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # transactions are explicit, see module doc
        # This connection's own settings first: they touch no file.
        for setting in (
            f"synchronous={synchronous}",
            "wal_autocheckpoint=0",
            f"journal_size_limit={wal_limit}",
        ):
            dbapi_connection.execute(f"PRAGMA {setting}").close()
        if pragma(dbapi_connection, "page_count") == 0:
            # Only a file with no header yet takes these, and setting them on an existing
            # spool is a write transaction: every new connection would wait for any other
            # writer's lock. Incremental vacuum lets pruning give space back to the disk.
            # Each commit writes whole pages to the WAL, and a spool's commit adds one small
            # row: 2 KiB pages halve the bytes per commit, so the WAL starts over half as
            # often.
            for setting in (f"page_size={PAGE_SIZE}", "auto_vacuum=INCREMENTAL"):
                dbapi_connection.execute(f"PRAGMA {setting}").close()
        dbapi_connection.execute("PRAGMA journal_mode=WAL").close()  # a read, once set

    return engine


def stored_revision(path: Path, settings: Settings, wal_limit: int) -> str | None:
    """The schema revision the file at ``path`` holds, without migrating it; None for a new
    or damaged file (opening it then moves the damaged one aside)."""
    from sqlalchemy.exc import DBAPIError

    prepare_path(path)
    probe = create_engine(path, settings, wal_limit)
    try:
        with probe.connect() as conn:
            return read_revision(conn)
    except DBAPIError as exc:
        if sqlite_code(exc) not in CORRUPT_CODES:
            raise
        return None
    finally:
        probe.dispose()
