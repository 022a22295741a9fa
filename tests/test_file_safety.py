"""The spool's files cannot be planted, swapped or read by another user (real files, real
owners: ``os.chown`` needs root, which is how CI runs)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sqreen
from sqreen import NotASpool, SpoolError, UnsafeSpool
from sqreen.cli.app import app
from sqreen.storage.files import SIDE_FILES

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file needs root")


def test_a_symlink_at_the_spool_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "other-app.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE theirs (x)")
    os.chmod(target, 0o644)
    before = target.read_bytes()
    link = tmp_path / "spool.db"
    link.symlink_to(target)
    spooler = sqreen.Spooler(path=link)
    assert spooler.track("e") is False  # refused, counted, and the host goes on
    assert spooler.health().failures == {"unsafe_path": 1}
    assert "symbolic link" in (spooler.health().last_error or "")
    with pytest.raises(UnsafeSpool):
        sqreen.Spooler(path=link, strict=True).track("e")
    assert target.read_bytes() == before and os.stat(target).st_mode & 0o777 == 0o644
    spooler.close()


@pytest.mark.parametrize("suffix", SIDE_FILES)
def test_a_symlink_beside_the_spool_is_refused(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"spool.db{suffix}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeSpool, match="symbolic link"):
        sqreen.Spooler(path=tmp_path / "spool.db", strict=True).track("e")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("suffix", ["-lock", "-turn"])
def test_a_lock_file_planted_later_refuses_every_call_and_close_still_works(
    tmp_path: Path, suffix: str
) -> None:
    """Planted after the spool was made: every call is refused alike, none raises (a
    ValueError on a negative descriptor escaped track() and close() before)."""
    path = tmp_path / "spool.db"
    sqreen.Spooler(path=path).close()
    Path(f"{path}{suffix}").unlink(missing_ok=True)
    Path(f"{path}{suffix}").symlink_to(tmp_path / "elsewhere")
    spooler = sqreen.Spooler(path=path)
    assert [spooler.track("e") for _ in range(5)] == [False] * 5
    assert spooler.health().failures == {"unsafe_path": 5}
    spooler.flush(timeout=1)
    spooler.close()


def test_a_shared_directory_needs_the_sticky_bit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(SpoolError, match="sticky"):
        sqreen.Spooler(path=shared / "spool.db", strict=True).track("e")
    os.chmod(shared, 0o1777)  # as /tmp
    spooler = sqreen.Spooler(path=shared / "spool.db", strict=True)
    assert spooler.track("e")
    spooler.close()


def test_our_own_loose_side_files_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").touch(mode=0o666)
        os.chmod(f"{path}{suffix}", 0o666)
    spooler = sqreen.Spooler(path=path)
    assert spooler.track("e")
    for suffix in ("", "-wal", "-shm"):
        assert os.stat(f"{path}{suffix}").st_mode & 0o077 == 0, suffix
    spooler.close()


@as_root
@pytest.mark.parametrize("suffix", ["", *SIDE_FILES])
def test_another_user_s_file_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "spool.db"
    planted = Path(f"{path}{suffix}")
    planted.touch()
    os.chmod(planted, 0o666)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeSpool, match="another user"):
        sqreen.Spooler(path=path, strict=True).track("e")
    assert planted.stat().st_uid == NOBODY and planted.stat().st_size == 0


@as_root
@pytest.mark.parametrize("suffix", ["-lock", "-turn"])
def test_another_user_holding_a_lock_file_does_not_stall_the_host(
    tmp_path: Path, suffix: str
) -> None:
    """Another local user creates the lock file in a shared sticky directory and holds it:
    the spool is refused at once, not after a lock timeout per call."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    planted = shared / f"spool.db{suffix}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, str(planted), str(NOBODY)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        spooler = sqreen.Spooler(path=shared / "spool.db", lock_timeout=2)
        started = time.monotonic()
        assert not any(spooler.track("e") for _ in range(20))
        assert time.monotonic() - started < 1.0
        assert spooler.health().failures == {"unsafe_path": 20}
        spooler.close()
    finally:
        holder.kill()
        holder.wait()


# Made, owned and held by that user (opened before dropping to it: the test's own directory is
# root's alone).
HOLD_FLOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
uid = int(sys.argv[2])
os.fchown(fd, uid, uid)
fcntl.flock(fd, fcntl.LOCK_EX)
os.setgid(uid)
os.setuid(uid)
print("held", flush=True)
time.sleep(600)
"""


def test_a_spool_deleted_while_open_is_started_afresh_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spooler = sqreen.Spooler(path=path, heartbeat_delay=3600)
    for i in range(10):
        assert spooler.track("before", {"properties": {"i": i}})
    for name in tmp_path.iterdir():  # rm spool.db*, as a cleanup job would
        name.unlink()
    for i in range(10):
        assert spooler.track("between", {"properties": {"i": i}})  # into the deleted file
    spooler._upkeep._maintain()  # the next heartbeat (or checkpoint) notices
    assert spooler.health().failures.get("spool_replaced") == 1
    assert spooler.track("after")
    spooler.close()
    with sqlite3.connect(path) as conn:
        names = [name for (name,) in conn.execute("SELECT name FROM events ORDER BY seq")]
    assert names == ["before"] * 10 + ["between"] * 10 + ["after"]
    assert os.stat(path).st_mode & 0o077 == 0


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_application_s_database_is_refused_untouched(tmp_path: Path, journal: str) -> None:
    """SQREEN_SPOOL_PATH pointed at the application's own database: no table is added, its
    journal mode and file mode stay, and `migrate` says what is wrong in one line."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("CREATE TABLE alembic_version (version_num TEXT)")  # its own migrations
        conn.execute("INSERT INTO alembic_version VALUES ('abc123')")
    conn.close()
    os.chmod(path, 0o644)
    before = path.read_bytes()
    spooler = sqreen.Spooler(path=path)
    assert spooler.track("e") is False
    assert spooler.health().failures == {"not_a_spool": 1}
    spooler.close()
    with pytest.raises(NotASpool, match="another application"):
        sqreen.Spooler(path=path, strict=True).track("e")
    result = CliRunner().invoke(app, ["--path", str(path), "migrate"])
    assert result.exit_code != 0 and "another application" in result.output
    assert "Traceback" not in result.output
    assert path.read_bytes() == before
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_an_empty_database_becomes_a_spool(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    path.write_bytes(b"")
    spooler = sqreen.Spooler(path=path)
    assert spooler.track("e")
    spooler.close()


def test_a_closed_spooler_keeps_no_file_open(tmp_path: Path) -> None:
    """Found by the model test (tests/test_model.py), after thousands of spoolers: close() left
    the lock files' descriptors open, until a process ran out of them."""
    import os

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    warm = sqreen.Spooler(path=tmp_path / "warm.db")  # the first spooler's one-off opens
    warm.track("x")
    warm.close()
    before = descriptors()
    for i in range(20):
        spooler = sqreen.Spooler(path=tmp_path / f"s{i % 3}.db", heartbeat_delay=3600)
        assert spooler.track("x")
        spooler._store.checkpoint()
        spooler.close()
    assert descriptors() <= before + 2


LAST_CLOSER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM events").fetchone()
connection.close()  # the last connection on the host would checkpoint and delete the WAL
"""


def test_opening_a_spool_again_keeps_this_process_s_sqlite_locks(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it,
    SQLite's among them. Opening the spool a second time in a process (another spooler, a
    command run in-process) checks the files by their paths alone: another process closing the
    spool must still see this one on it, and keep its WAL, or it would delete the WAL this
    process still writes (commits lost) and truncate the shared memory it still maps."""
    path = tmp_path / "spool.db"
    first = sqreen.Spooler(path=path)
    assert first.track("before")
    second = sqreen.Spooler(path=path)
    assert second.track("by.the.second")  # opens the same files again, in this process
    subprocess.run([sys.executable, "-c", LAST_CLOSER, str(path)], check=True, timeout=60)
    assert Path(f"{path}-wal").exists(), "another process took this one's locks for gone"
    assert first.track("after")
    counted = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1])"
         ".execute('SELECT count(*) FROM events').fetchone()[0])", str(path)],
        check=True, timeout=60, capture_output=True, text=True,
    )  # fmt: skip
    assert int(counted.stdout) == 3 == first.stats().pending
    second.close()
    first.close()
