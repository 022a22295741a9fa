"""Schema migrations: applied on first open, serialised, found from an installed wheel."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

import sqreen
from sqreen.cli.app import app
from sqreen.event import build
from sqreen.storage import schema

from .conftest import readable, run_child

ROOT = Path(__file__).resolve().parent.parent


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_first_open_creates_the_schema(spooler: sqreen.Spooler, spool_path: Path) -> None:
    assert spooler.track("first")
    assert {"events", "alembic_version"} <= tables(spool_path)
    assert revision(spool_path) == schema.HEAD
    with sqlite3.connect(spool_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_using_a_current_spool_imports_neither_sqlalchemy_nor_alembic(spool_path: Path) -> None:
    first = sqreen.Spooler(path=spool_path)
    assert first.track("creates.the.spool")
    first.close()
    fresh = run_child("check_imports", str(spool_path), stdout=subprocess.PIPE)
    out, _ = fresh.communicate(timeout=60)
    assert out.decode().strip() == "none"
    assert revision(spool_path) == schema.HEAD


def test_known_revisions_match_the_migration_scripts() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    scripts = ScriptDirectory.from_config(config)
    chain = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert tuple(chain) == schema.REVISIONS
    assert scripts.get_heads() == [schema.HEAD]


def test_cli_migrate_reports_revisions(spool_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["--path", str(spool_path), "migrate"])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == f"{spool_path}: (empty) -> {schema.HEAD}"
    again = runner.invoke(app, ["--path", str(spool_path), "migrate"])
    assert again.output.strip() == f"{spool_path}: {schema.HEAD} -> {schema.HEAD}"


def future(spool_path: Path, revision: str, min_writer: str) -> None:
    """The spool as a newer release would leave it: a revision this one does not know, and the
    oldest revision that may still write it."""
    with sqlite3.connect(spool_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        note = f'{{"revision": "{revision}", "min_writer": "{min_writer}"}}'
        conn.execute("UPDATE notes SET value = ? WHERE name = 'schema'", (note,))


def test_cli_migrate_refuses_a_newer_schema(spool_path: Path) -> None:
    sqreen.Spooler(path=spool_path).track("x")
    future(spool_path, "9999_future", "9999_future")  # a breaking migration
    result = CliRunner().invoke(app, ["--path", str(spool_path), "migrate"])
    assert result.exit_code == 1
    assert "newer than this sqreen-spool knows" in result.output
    assert "Traceback" not in result.output


def test_cli_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"sqreen-spool {sqreen.__version__}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ into the source tree, and the other test
    # worker may be building there at the same time.
    source = out / "source"
    skipped = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skipped))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
    )
    (built,) = out.glob("sqreen_spool-*.whl")
    return built


@pytest.mark.slow
def test_wheel_installs_only_the_sqreen_import_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"sqreen"}
    assert "sqreen/migrations/versions/0001_events.py" in names
    assert "sqreen/migrations/script.py.mako" in names
    assert "sqreen/cli/app.py" in names
    # Every subpackage of the tree is in the wheel (a new one left out of pyproject.toml's list
    # works in the editable install and is missing once installed), with its data files.
    for package in (ROOT / "spool").glob("*/__init__.py"):
        assert f"sqreen/{package.parent.name}/__init__.py" in names, package.parent.name
    for static in (ROOT / "spool" / "explorer" / "static").iterdir():
        assert f"sqreen/explorer/static/{static.name}" in names


@pytest.mark.slow
def test_migrations_are_found_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    spool = tmp_path / "wheel.db"
    # The installed copy comes first on sys.path; the dependencies come from this venv.
    script = (
        "import sqreen, sys; "
        f"assert sqreen.__file__.startswith({str(target)!r}), sqreen.__file__; "
        f"assert sqreen.Spooler(path={str(spool)!r}, strict=True).track('from.wheel'); "
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert revision(spool) == schema.HEAD


def migrate_to(engine: Any, target: str, downgrade: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(ROOT / "migrations"))
        config.attributes["connection"] = conn
        (command.downgrade if downgrade else command.upgrade)(config, target)


def test_leases_live_at_the_upgrade_become_claims(spool_path: Path, collector: Any) -> None:
    # A spool written by the previous release: four pending events, one of them leased by a
    # flusher that is still running (it holds the lease for a minute).
    spool_path.parent.mkdir(parents=True, exist_ok=True)
    events = [build("old", {}) for _ in range(4)]
    engine = create_engine(f"sqlite:///{spool_path}")
    migrate_to(engine, "0002_delivery")
    with engine.begin() as conn:
        for event in events:
            conn.exec_driver_sql(
                "INSERT INTO events (id, name, enqueued_at, payload) VALUES (?, 'old', ?, ?)",
                (event.id, time.time(), event.payload),
            )
        conn.exec_driver_sql(
            "INSERT INTO leases VALUES (2, 'elsewhere:1:x', ?)", (time.time() + 60,)
        )

    spooler = sqreen.Spooler(path=spool_path, url=collector.url)
    result = spooler.flush()
    spooler.close()
    assert revision(spool_path) == schema.HEAD
    assert (result.delivered, result.pending) == (3, 1)
    assert [e["id"] for e in collector.accepted_events()] == [events[i].id for i in (0, 2, 3)]
    with readable(spool_path) as conn:
        held = conn.execute("SELECT sent_id(id), lease_owner FROM event_state").fetchall()
    assert held == [(events[1].id, "elsewhere:1:x")]

    # And back: the claim becomes a lease on the row it covers.
    migrate_to(engine, "0002_delivery", downgrade=True)
    engine.dispose()
    with sqlite3.connect(spool_path) as conn:
        assert conn.execute("SELECT seq, owner FROM leases").fetchall() == [(2, "elsewhere:1:x")]
        assert conn.execute("SELECT lease_owner FROM event_state").fetchall() == [
            ("elsewhere:1:x",)
        ]


def test_the_tables_match_what_the_migrations_make(spool_path: Path) -> None:
    """Alembic's autogenerate compares sqreen.storage.tables with a spool migrated to head:
    no difference, so the SQLAlchemy view of the schema cannot drift from the migrations."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from sqreen.storage import tables

    sqreen.Spooler(path=spool_path).close()
    with sqreen.Spooler(path=spool_path) as spooler:
        assert spooler.track("migrated")
    engine = create_engine(f"sqlite:///{spool_path}")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, tables.metadata)
    engine.dispose()
    # Indexes the migrations make by hand (partial ones) are not the tables' business.
    differences = [d for d in differences if d[0] not in ("add_index", "remove_index")]
    assert differences == []


def test_a_newer_additive_schema_stays_writable(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = sqreen.Spooler(path=spool_path)
    assert first.track("before")
    first.close()
    with sqlite3.connect(spool_path) as conn:
        stored = conn.execute("SELECT value FROM notes WHERE name = 'schema'").fetchone()[0]
    oldest = schema.min_writer(schema.HEAD)  # the last breaking migration
    assert f'"min_writer":"{oldest}"' in stored
    future(spool_path, "9999_additive", oldest)  # a newer release's additive migration
    with caplog.at_level(logging.WARNING, logger="sqreen.spool"):
        spooler = sqreen.Spooler(path=spool_path)
        assert spooler.track("after") and spooler.track("again")
        assert spooler.health().failures == {}
        spooler.close()
    said = [r for r in caplog.records if "migrated by a newer sqreen-spool" in r.getMessage()]
    assert len(said) == 1
    assert revision(spool_path) == "9999_additive"  # never migrated back
    shown = CliRunner().invoke(app, ["--path", str(spool_path), "inspect", "--json"])
    assert shown.exit_code == 0, shown.output
    future(spool_path, "9999_breaking", "9999_breaking")
    refused = sqreen.Spooler(path=spool_path)
    assert refused.track("refused") is False  # never raises; counted
    assert "schema_too_new" in refused.health().failures
    refused.close()


def test_every_migration_declares_its_kind() -> None:
    import importlib.util

    for path in sorted((ROOT / "migrations" / "versions").glob("0*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kind = getattr(module, "additive", None)
        assert isinstance(kind, bool), f"{path.name} must declare additive = True or False"
        assert kind == (module.revision in schema.ADDITIVE), path.name


def test_the_security_class_is_given_to_the_library_s_own_events_at_the_upgrade(
    spool_path: Path,
) -> None:
    spool_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{spool_path}")
    migrate_to(engine, "0005_actions")
    with engine.begin() as conn:
        for name in ("page.view", "sqreen.auth_track", "sqreen.signup_track", "sq.action.block_ip"):
            conn.exec_driver_sql(
                "INSERT INTO events (id, name, enqueued_at, payload) VALUES (?, ?, ?, x'7b7d')",
                (name, name, time.time()),
            )
    engine.dispose()
    spooler = sqreen.Spooler(path=spool_path)
    spooler.start()  # migrates
    spooler.close()
    with sqlite3.connect(spool_path) as conn:
        flags = dict(conn.execute("SELECT name, security FROM events"))
    assert flags == {"page.view": 0, "sqreen.auth_track": 1, "sqreen.signup_track": 1,
                     "sq.action.block_ip": 1}  # fmt: skip


def test_an_upgrade_that_finds_a_newer_additive_spool_leaves_it(spool_path: Path) -> None:
    """Two releases open a new spool at once: the older one, queued for the write lock while
    the newer one migrated it, finds a revision it does not know, and keeps writing."""
    from sqreen.storage.migrate import upgrade

    def engine() -> Any:
        return create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(spool_path, isolation_level=None)
        )

    with sqreen.Spooler(path=spool_path) as spooler:
        assert spooler.track("made")
    future(spool_path, "9999_additive", schema.min_writer(schema.HEAD))
    assert upgrade(engine()) == ("9999_additive", "9999_additive")
    future(spool_path, "9999_breaking", "9999_breaking")
    with pytest.raises(sqreen.SchemaTooNew):
        upgrade(engine())
