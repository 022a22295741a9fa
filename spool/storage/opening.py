"""Opening the spool file: each connection's settings, the schema checked (and brought up to
date), a damaged file moved aside.

Every connection, plain or under SQLAlchemy, is made by :func:`connect`: the driver's autocommit
mode (a lone statement is its own transaction; the store's writes issue ``BEGIN IMMEDIATE``),
SQLite's automatic checkpoint off (see :mod:`.checkpoints`), ``synchronous`` by the durability
setting, and the WAL journal. A new file takes 2 KiB pages and incremental vacuum first.

Opening a spool that is already current costs one query on a plain sqlite3 connection:
SQLAlchemy and Alembic (~250 ms of imports) are loaded only to migrate (see :mod:`.migrate`).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from . import schema
from .failures import CORRUPT_CODES, describe, sqlite_code
from .files import prepare_path, quarantine
from .revision import check_known, oldest_writer, read_revision
from .sql import pragma

if TYPE_CHECKING:  # SQLAlchemy is imported to migrate, not to open a current spool
    from sqlalchemy import Engine

log = logging.getLogger("sqreen.spool")

PAGE_SIZE = 2048
_SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}


def open_spool(path: Path, settings: Settings, wal_limit: int) -> sqlite3.Connection:
    """A connection to the spool at ``path``, made or migrated as needed; a damaged file is
    moved aside (see :func:`.files.quarantine`) and a fresh spool started in its place."""
    prepare_path(path)
    try:
        return _checked(path, settings, wal_limit)
    except Exception as exc:
        if sqlite_code(exc) not in CORRUPT_CODES:
            raise
        moved = quarantine(path)
        log.error(
            "spool %s is not a readable SQLite database (%s); moved it to %s and "
            "started a fresh spool",
            path,
            describe(exc),
            moved,
        )
        prepare_path(path)
        return _checked(path, settings, wal_limit)


def connect(path: Path, settings: Settings, wal_limit: int) -> sqlite3.Connection:
    """A connection to ``path`` configured for the spool (see the module docstring)."""
    return configured(path, settings.lock_timeout, settings.durability, wal_limit)


def configured(
    path: Path, lock_timeout: float, durability: str, wal_limit: int
) -> sqlite3.Connection:
    """A connection to ``path`` configured as the module docstring says; for the spool and
    for the collector's event store (:mod:`sqreen.collector.store`)."""
    connection = sqlite3.connect(
        path, timeout=lock_timeout, check_same_thread=False, isolation_level=None
    )
    try:
        # This connection's own settings first: they touch no file.
        for setting in (
            f"synchronous={_SYNCHRONOUS[durability]}",
            "wal_autocheckpoint=0",
            f"journal_size_limit={wal_limit}",
        ):
            connection.execute(f"PRAGMA {setting}").close()
        if pragma(connection, "page_count") == 0:
            # Only a file with no header yet takes these, and setting them on an existing
            # spool is a write transaction: every new connection would wait for any other
            # writer's lock. Incremental vacuum lets pruning give space back to the disk.
            # Each commit writes whole pages to the WAL, and a spool's commit adds one small
            # row: 2 KiB pages halve the bytes per commit, so the WAL starts over half as
            # often.
            for setting in (f"page_size={PAGE_SIZE}", "auto_vacuum=INCREMENTAL"):
                connection.execute(f"PRAGMA {setting}").close()
        connection.execute("PRAGMA journal_mode=WAL").close()  # a read, once set
    except BaseException:
        connection.close()
        raise
    return connection


def create_engine(path: Path, settings: Settings, wal_limit: int) -> Engine:
    """An SQLAlchemy engine whose connections :func:`connect` makes; it opens nothing yet."""
    from sqlalchemy import create_engine as sqlalchemy_engine

    return sqlalchemy_engine("sqlite://", creator=lambda: connect(path, settings, wal_limit))


def stored_revision(path: Path, settings: Settings, wal_limit: int) -> str | None:
    """The schema revision the file at ``path`` holds, without migrating it; None for a new
    or damaged file (opening it then moves the damaged one aside)."""
    prepare_path(path)
    try:
        connection = connect(path, settings, wal_limit)
        try:
            return read_revision(connection)
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        if sqlite_code(exc) not in CORRUPT_CODES:
            raise
        return None


_told: set[str] = set()


def _newer_once(path: Path, revision: str) -> None:
    """Say once per spool and process that a newer release migrated it (compatibly)."""
    if str(path) not in _told:
        _told.add(str(path))
        log.warning(
            "sqreen spool: %s was migrated by a newer sqreen-spool (schema %s); this release "
            "still writes it (the migration is additive)",
            path,
            revision,
        )


def _checked(path: Path, settings: Settings, wal_limit: int) -> sqlite3.Connection:
    """A connection to a spool of the schema this code knows: one query when it is current.

    The connection stays open through a migration: closing the last one to a WAL database
    would checkpoint all of it, which after a crash can be a large WAL."""
    connection = connect(path, settings, wal_limit)
    try:
        revision = read_revision(connection)
        if revision is not None and revision not in schema.REVISIONS:
            oldest = oldest_writer(connection)
            check_known(revision, oldest)  # a newer release's spool: writable if additive
            _newer_once(path, revision)
        elif revision != schema.HEAD:
            from .migrate import upgrade

            engine = create_engine(path, settings, wal_limit)
            try:
                upgrade(engine)
            finally:
                engine.dispose()
    except BaseException:
        connection.close()
        raise
    return connection
