"""The track() API: what gets stored, exactly."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import sqreen

from .conftest import readable, stored_events


def test_seed_example_from_the_sqreen_docs(spooler: sqreen.Spooler, spool_path: Path) -> None:
    event_date = datetime(2018, 3, 15, 14, 42, 0, 79043)
    assert spooler.track("user.signup", {"properties": {"foo": "bar"}, "timestamp": event_date})
    (event,) = stored_events(spool_path)
    assert event["name"] == "user.signup"
    assert event["properties"] == {"foo": "bar"}
    assert event["timestamp"] == "2018-03-15T14:42:00.079043+00:00"
    assert uuid.UUID(event["id"]).version == 4


def test_name_only_gets_current_time_and_omits_empty_keys(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:
    before = datetime.now(UTC)
    assert spooler.track("ping")
    assert spooler.track("pong", {"properties": {}, "user_identifiers": {}})
    for event in stored_events(spool_path):
        assert set(event) == {"id", "name", "timestamp"}
        stamp = datetime.fromisoformat(event["timestamp"])
        assert before <= stamp <= datetime.now(UTC)


def test_aware_timestamps_are_converted_to_utc(spooler: sqreen.Spooler, spool_path: Path) -> None:
    paris = timezone(timedelta(hours=2))
    spooler.track("t", {"timestamp": datetime(2020, 6, 1, 12, 0, tzinfo=paris)})
    assert stored_events(spool_path)[0]["timestamp"] == "2020-06-01T10:00:00+00:00"


def test_all_options_and_nested_properties_round_trip(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:
    properties = {
        "plan": "pro",
        "seats": 3,
        "ratio": 0.25,
        "ok": True,
        "none": None,
        "tags": ["a", "b", [1, 2]],
        "nested": {"deeper": {"x": [{"y": "z"}]}},
        "unicode": "héllo ✓",
    }
    assert spooler.track(
        "purchase",
        {"properties": properties, "user_identifiers": {"email": "a@example.com", "id": "42"}},
    )
    (event,) = stored_events(spool_path)
    assert event["properties"] == properties
    assert event["user_identifiers"] == {"email": "a@example.com", "id": "42"}


def test_each_event_gets_its_own_id_and_enqueue_time(
    spooler: sqreen.Spooler, spool_path: Path
) -> None:

    start = time.time()
    for _ in range(50):
        spooler.track("many")
    with readable(spool_path) as conn:
        rows = conn.execute("SELECT sent_id(id), enqueued_at, status FROM events").fetchall()
    assert len({row[0] for row in rows}) == 50
    assert all(start <= row[1] <= time.time() and row[2] == 0 for row in rows)
    assert [e["id"] for e in stored_events(spool_path)] == [row[0] for row in rows]


def test_module_level_track_uses_configured_default(tmp_path: Path) -> None:
    path = tmp_path / "default.db"
    sqreen.configure(path=path)
    assert sqreen.track("configured", {"properties": {"foo": "bar"}})
    assert [e["name"] for e in stored_events(path)] == ["configured"]


def test_default_spool_path_is_per_user_state_dir(tmp_path: Path) -> None:
    assert sqreen.track("default.path")
    path = tmp_path / "state" / "sqreen" / "spool.db"
    assert [e["name"] for e in stored_events(path)] == ["default.path"]
    assert (path.parent.stat().st_mode & 0o777) == 0o700


def test_spool_file_and_directory_are_private(spooler: sqreen.Spooler, spool_path: Path) -> None:
    spooler.track("private")
    assert spool_path.parent.stat().st_mode & 0o777 == 0o700
    for name in (spool_path, Path(f"{spool_path}-wal"), Path(f"{spool_path}-shm")):
        assert name.stat().st_mode & 0o777 == 0o600, name


def test_existing_spool_file_with_loose_mode_is_tightened(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    spool_path.touch(mode=0o644)
    spool_path.chmod(0o644)
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("tightened")
    spooler.close()
    assert spool_path.stat().st_mode & 0o777 == 0o600


def test_ids_are_version_4_uuids() -> None:
    from sqreen.event import new_id

    ids = {new_id() for _ in range(10000)}
    assert len(ids) == 10000
    for text in list(ids)[:500]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_never_reuses_its_parents_ids() -> None:
    from sqreen.event import new_id

    new_id()  # the parent now holds a batch of ids not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, "\n".join(new_id() for _ in range(200)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(200)}
    assert len(child) == 200 and len(parent) == 200
    assert not child & parent


def test_exported_names_are_the_public_api() -> None:
    for name in sqreen.__all__:
        assert hasattr(sqreen, name), name
    assert issubclass(sqreen.InvalidEvent, ValueError)
    assert issubclass(sqreen.SchemaTooNew, sqreen.SpoolError)
