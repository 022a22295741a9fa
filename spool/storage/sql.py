"""Small helpers on SQLite connections, shared by the storage modules."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

WAL_FRAME_HEADER = 24  # bytes before each page in the WAL


def pragma(connection: sqlite3.Connection, name: str) -> int:
    """The value of an integer pragma (``page_size``, ``freelist_count``, ...)."""
    return int(scalar(connection, f"PRAGMA {name}"))


def scalar(connection: sqlite3.Connection, sql: str, *parameters: object) -> Any:
    """The first column of the first row, or None when there is no row."""
    row = connection.execute(sql, parameters).fetchone()
    return None if row is None else row[0]


def run_script(connection: sqlite3.Connection, script: str) -> None:
    """Run statements separated by ``;`` inside the caller's transaction (``executescript``
    would commit it first). No statement may hold a ``;`` of its own."""
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


def driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under an SQLAlchemy connection (for the backup API, and helpers
    shared with :meth:`Store.write`'s transactions)."""
    raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return raw
