"""The spool's files on disk: made safely, measured, moved aside, read without writing.

The spool is ``<path>`` with SQLite's ``<path>-wal`` and ``<path>-shm`` beside it, and the
checkpointer's and the writers' lock files ``<path>-lock`` and ``<path>-turn`` (see
:mod:`sqreen.storage.locks`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NotASpool, UnsafeSpool

if TYPE_CHECKING:  # imported when an engine is made, not with sqreen
    from sqlalchemy import Engine

WAL = "-wal"
LOCK = "-lock"
TURN = "-turn"
# Every file beside the spool: SQLite's, then the lock files (sqreen.storage.locks). Each must be
# ours and no symbolic link, or another local user could read the spool or stall its writers.
SIDE_FILES = (WAL, "-shm", LOCK, TURN)


def identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) the path names now, or None when nothing is there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def file_bytes(path: Path) -> int:
    """A spool's size on disk: database file and WAL."""
    return size_of(str(path)) + size_of(f"{path}{WAL}")


def size_of(name: str) -> int:
    """A file's size, 0 when it does not exist."""
    try:
        return os.stat(name).st_size
    except FileNotFoundError:
        return 0


def read_only_engine(path: Path, lock_timeout: float) -> Engine:
    """An engine that can only read the spool at ``path``.

    For inspecting: it never creates, migrates, quarantines or checkpoints the file, and a
    read-only connection cannot write even by mistake.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import URL

    query = {"mode": "ro", "uri": "true"}
    if not os.path.exists(f"{path}{WAL}"):
        # No process has the spool open (the last one to close it removed its WAL): reading it
        # as immutable creates no -wal and -shm files, which a read-only connection could not
        # remove again. A writer starting meanwhile only means this look misses its events.
        query["immutable"] = "1"
    engine = create_engine(
        URL.create("sqlite", database=path.resolve().as_uri(), query=query),
        connect_args={"timeout": lock_timeout, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None

    return engine


def read_only(path: Path, timeout: float = 5.0, threads: bool = False) -> sqlite3.Connection:
    """A plain sqlite3 connection to ``path`` that can only read it (and creates nothing when
    the file is missing: it fails instead); ``threads`` lets other threads use it."""
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout,
        check_same_thread=not threads,
    )  # fmt: skip


def prepare_path(
    path: Path, tables: frozenset[str] | None = None, setting: str = "SQREEN_SPOOL_PATH"
) -> None:
    """Create the spool's directory (0700) and file (0600) before SQLite does, refusing
    (:class:`UnsafeSpool`) what another user could use to read or swap the spool.

    Also for the collector's event store: ``tables`` are those its files have (default: a
    spool's), ``setting`` what a refusal says to change.

    Only directories this call creates get 0700: an existing parent may be shared (``/tmp``),
    but then only with the sticky bit, so that no other user can replace our files. The spool
    path must not be a symbolic link (a planted one would make us chmod, overwrite or add our
    tables to its target). The files beside it (:data:`SIDE_FILES`) must be ours: another
    user's -wal or -shm, pre-created, would stay readable to them, and a lock file held by
    them would stall every writer. Ours are tightened to 0600.
    """
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    shared = os.stat(path.parent)
    if shared.st_mode & stat.S_IWOTH and not shared.st_mode & stat.S_ISVTX:
        raise UnsafeSpool(
            f"the directory {path.parent} is writable by every user and has no sticky bit: "
            f"another user could replace the file; choose another {setting}"
        )
    refuse_foreign(path, tables or SPOOL_TABLES, setting)
    if not check_ours(str(path)):
        try:  # a file made here and now: no connection of this process can hold locks on it
            os.close(_no_follow(str(path), os.O_RDWR | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            check_ours(str(path))  # made meanwhile by another process
    for suffix in SIDE_FILES:
        check_ours(f"{path}{suffix}")


def check_ours(name: str) -> bool:
    """Refuse (:class:`UnsafeSpool`) a symbolic link or a file of another user at ``name``,
    make ours 0600, and say whether there is a file; by its path alone.

    Never by opening it: closing any descriptor of a file drops every POSIX lock this process
    holds on it, SQLite's among them, and this process may already have the spool open (a
    second spooler, a command run in-process). Another process would then take the spool for
    unused, delete the WAL this one still writes (its commits lost) and truncate the shared
    memory it still maps. Checking by path is safe here: in a directory that is ours, or
    shared with the sticky bit, no other user can swap the file between the look and the
    chmod."""
    try:
        info = os.lstat(name)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeSpool(f"{name} is a symbolic link; refusing to follow it")
    if _too_open(name, info):
        os.chmod(name, 0o600)
    return True


def _too_open(name: str, info: os.stat_result) -> bool:
    """Refuse a file of another user; say whether ours is open to others."""
    if info.st_uid != os.geteuid():
        raise UnsafeSpool(
            f"{name} belongs to another user (uid {info.st_uid}); refusing to open the spool"
        )
    return bool(info.st_mode & 0o077)


# Every spool has these tables; a database with tables but not these is another application's.
SPOOL_TABLES = frozenset({"alembic_version", "events"})


def is_sqlite(path: Path) -> bool:
    """Whether the file at ``path`` is an SQLite database (OSError when it cannot be read).

    Asked of SQLite, not read with ``open()``: this process may have the file open through
    SQLite (the explorer replays the store it serves), and closing a descriptor of our own
    would drop SQLite's locks on it (see :func:`check_ours`)."""
    if os.stat(path).st_size == 0:
        return False
    try:
        with contextlib.closing(read_only(path)) as connection:
            connection.execute("PRAGMA schema_version").close()
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
            return False
        raise OSError(errno.EIO, f"not readable as SQLite ({exc})") from exc
    return True


def refuse_foreign(
    path: Path, expected: frozenset[str] = SPOOL_TABLES, setting: str = "SQREEN_SPOOL_PATH"
) -> None:
    """Raise :class:`NotASpool` when ``path`` holds an SQLite database with tables that is not
    a spool, before anything opens it for writing (which would switch it to WAL, change its
    mode and add the spool's tables).

    Read-only, and immutable when no process has it open in WAL mode, so the look itself
    creates no file; through SQLite, which shares this process's locks on the file with its
    other connections (see :func:`check_ours`). Bytes that are not an SQLite database at all
    are a damaged spool's business (the store moves them aside); so is a database that cannot
    be read here.
    """
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return  # prepare_path refuses it
    except FileNotFoundError:
        return  # nothing there yet
    # Through SQLite, never open(): see check_ours. Bytes that are no database fail to open.
    query = "mode=ro" if os.path.exists(f"{path}{WAL}") else "mode=ro&immutable=1"
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True, timeout=1)
        ) as conn:
            tables = {name for (name,) in conn.execute(_TABLES)}
    except sqlite3.Error:
        return
    if tables and not tables >= expected:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotASpool(
            f"{path} is an SQLite database of another application (tables: {shown}); it was "
            f"left untouched: point {setting} at a file of its own"
        )


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"


def _no_follow(name: str, flags: int) -> int:
    """``os.open`` that refuses (:class:`UnsafeSpool`) to follow a symbolic link; a file it
    creates is 0600."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UnsafeSpool(f"{name} is a symbolic link; refusing to follow it") from None


def open_ours(name: str, flags: int) -> int:
    """Open ``name`` without following a symbolic link and return the descriptor; refuse
    (:class:`UnsafeSpool`) a file of another user, and make ours 0600. Raises
    FileNotFoundError when it does not exist and ``flags`` has no ``O_CREAT``."""
    fd = _no_follow(name, flags)
    try:
        if _too_open(name, os.fstat(fd)):
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def quarantine(path: Path) -> Path:
    """Move a damaged spool (and its WAL) aside to ``<name>.corrupt-<timestamp>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            if suffix == "-wal":
                os.replace(side, target.with_name(target.name + suffix))
            else:
                side.unlink()
    return target
