"""Storage trouble never raises into the application: track() returns False, logs, counts."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sqreen

from .conftest import counters, integrity, run_child, stored_events


@contextlib.contextmanager
def read_only_directory(directory: Path) -> Iterator[None]:
    """Make ``directory`` unwritable for real, root included (root ignores mode bits)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a directory read-only")
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        undo = ["chattr", "-i", str(directory)]
    else:
        directory.chmod(0o500)
        undo = ["chmod", "700", str(directory)]
    try:
        with pytest.raises(OSError):
            (directory / "probe").touch()
        yield
    finally:
        subprocess.run(undo, check=True)


def test_read_only_directory_for_a_new_spool(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    spooler = sqreen.Spooler(path=spool_path)
    with read_only_directory(spool_path.parent):
        assert spooler.track("lost") is False
        assert spooler.track("lost") is False
    report = spooler.health()
    assert report.failures == {"read_only": 2}
    assert report.last_error and "read_only" in report.last_error
    assert spooler.track("after") is True  # recovers once the directory is writable
    spooler.close()
    assert [e["name"] for e in stored_events(spool_path)] == ["after"]
    # ... and the failures are now in the spool, for `sqreen-spool inspect` to show.
    assert counters(spool_path)["failed.read_only"] == 2


def test_read_only_directory_for_an_existing_spool(spool_path: Path) -> None:
    first = sqreen.Spooler(path=spool_path)
    assert first.track("kept")
    first.close()  # the last connection removes the WAL, which now cannot be recreated
    spooler = sqreen.Spooler(path=spool_path)
    with read_only_directory(spool_path.parent):
        assert spooler.track("lost") is False
    assert spooler.health().total_failures == 1
    spooler.close()
    assert [e["name"] for e in stored_events(spool_path)] == ["kept"]


def test_full_disk(spooler: sqreen.Spooler, spool_path: Path) -> None:
    assert spooler.track("before")
    writer = (
        spooler._store.connections._raw
    )  # the hot-path connection: cap its file size, as a full disk would
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages + 2}")
    results = [spooler.track("filler", {"properties": {"pad": "x" * 3000}}) for _ in range(20)]
    assert results[0] is True and results[-1] is False
    failed = results.count(False)
    assert spooler.health().failures == {"disk_full": failed}
    writer.execute("PRAGMA max_page_count = 1073741823")
    assert spooler.track("after")
    names = [e["name"] for e in stored_events(spool_path)]
    assert names == ["before"] + ["filler"] * results.count(True) + ["after"]
    assert integrity(spool_path) == "ok"


def test_corrupt_file_is_moved_aside(spool_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_path.parent.mkdir(parents=True)
    garbage = b"this is not a database, just some bytes " * 200
    spool_path.write_bytes(garbage)
    spooler = sqreen.Spooler(path=spool_path)
    with caplog.at_level(logging.ERROR, logger="sqreen.spool"):
        assert spooler.track("fresh")
    spooler.close()
    (moved,) = spool_path.parent.glob("events.db.corrupt-*")
    assert moved.read_bytes() == garbage
    assert [e["name"] for e in stored_events(spool_path)] == ["fresh"]
    assert "moved it to" in caplog.text and str(moved) in caplog.text


def test_damaged_header_is_moved_aside(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    spooler.track("old")
    spooler.close()
    with open(spool_path, "r+b") as f:
        f.write(b"\x00" * 100)  # wipe the SQLite header
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("new")
    spooler.close()
    assert len(list(spool_path.parent.glob("events.db.corrupt-*"))) == 1
    assert [e["name"] for e in stored_events(spool_path)] == ["new"]


@pytest.mark.slow
def test_lock_timeout(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path, lock_timeout=0.2)
    assert spooler.track("before")
    holder = run_child("hold_lock", str(spool_path), "3", stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        started = time.monotonic()
        assert spooler.track("blocked") is False
        assert 0.15 < time.monotonic() - started < 2.5
        assert spooler.health().failures == {"lock_timeout": 1}
        strict = sqreen.Spooler(path=spool_path, lock_timeout=0.1, strict=True)
        with pytest.raises(sqreen.SpoolError, match="lock_timeout"):
            strict.track("blocked")
        strict.close()
    finally:
        holder.wait(10)
    assert spooler.track("after")
    spooler.close()
    assert [e["name"] for e in stored_events(spool_path)] == ["before", "after"]


def test_spool_from_a_newer_version(spool_path: Path) -> None:
    sqreen.Spooler(path=spool_path).close()
    sqreen.Spooler(path=spool_path).track("x")
    with sqlite3.connect(spool_path) as conn:  # migrated past a breaking revision
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
        note = '{"revision": "9999_future", "min_writer": "9999_future"}'
        conn.execute("UPDATE notes SET value = ? WHERE name = 'schema'", (note,))
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("refused") is False
    assert spooler.health().failures == {"schema_too_new": 1}
    strict = sqreen.Spooler(path=spool_path, strict=True)
    with pytest.raises(sqreen.SchemaTooNew, match="upgrade sqreen-spool"):
        strict.track("refused")


def test_failures_are_logged_at_a_bounded_rate(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path.parent.mkdir(parents=True)
    spooler = sqreen.Spooler(path=spool_path)
    with read_only_directory(spool_path.parent), caplog.at_level(logging.ERROR):
        for _ in range(200):
            assert spooler.track("lost") is False
    assert spooler.health().failures == {"read_only": 200}
    # Failures are logged at ERROR; the background thread's one-off warnings may land later.
    failures = [r for r in caplog.records if r.name == "sqreen.spool" and r.levelno >= 40]
    assert len(failures) == 1
