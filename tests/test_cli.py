"""Every ``sqreen-spool`` command through Typer's CliRunner, against real spool files and a real
collector on loopback."""

from __future__ import annotations

import hashlib
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

import sqreen
from sqreen.cli.app import app
from sqreen.cli.reference import Answer
from sqreen.storage import schema

from . import collector as c
from .conftest import counters, readable, rows

runner = CliRunner()


def cli(spool: Path, *args: str, input: bytes | str | None = None, **env: str) -> Result:
    return runner.invoke(app, ["--path", str(spool), *args], input=input, env=env)


def track(
    spool: Path, n: int, name: str = "e", keep_delivered: float = 0, **properties: Any
) -> list[str]:
    spooler = sqreen.Spooler(path=spool, keep_delivered=keep_delivered)
    for i in range(n):
        assert spooler.track(name, {"properties": {"i": i, **properties}})
    spooler.close()
    return [r["id"] for r in rows(spool, f"name = '{name}'")]


def snapshot(spool: Path) -> tuple[str, list[Any]]:
    """The database file's bytes (hashed) and every row of every table: what "changes nothing"
    must leave alone."""
    digest = hashlib.sha256(spool.read_bytes()).hexdigest()
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        content = [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables]
    return digest, content


def age(spool: Path, seconds: float, where: str = "1") -> None:
    """Make events look ``seconds`` older in the spool than they are."""
    with readable(spool) as conn:
        conn.execute(f"UPDATE events SET enqueued_at = enqueued_at - ? WHERE {where}", (seconds,))


@pytest.fixture
def mixed(spool_path: Path, collector: Any) -> dict[str, list[str]]:
    """A spool with delivered (kept), rejected, pending and leased events."""
    ids = track(spool_path, 6, "sent")
    collector.respond_with(c.accept(rejected=ids[:2], reason="bad plan"))
    spooler = sqreen.Spooler(path=spool_path, url=collector.url, keep_delivered=3600)
    assert spooler.flush().delivered == 4
    spooler.close()
    pending = track(spool_path, 3, "later", keep_delivered=3600)
    with readable(spool_path) as conn:
        query = "SELECT seq FROM events WHERE sent_id(id) = ?"
        seq = conn.execute(query, (pending[0],)).fetchone()[0]
        conn.execute(
            "INSERT INTO claims (owner, lo, hi, expires) VALUES ('elsewhere', ?, ?, ?)",
            (seq, seq, time.time() + 60),
        )
    return {"rejected": ids[:2], "delivered": ids[2:], "pending": pending}


def test_collect_on_a_busy_port(collector: Any) -> None:
    result = runner.invoke(app, ["collect", "--port", str(collector.port)])
    assert result.exit_code == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sqreen-spool {sqreen.__version__}"


@pytest.mark.parametrize(
    "args", [["inspect"], ["inspect", "events"], ["flush"], ["prune"], ["prune", "--dry-run"]]
)
def test_commands_do_not_create_a_missing_spool(spool_path: Path, args: list[str]) -> None:
    result = cli(spool_path, "--url", "http://127.0.0.1:9/", *args)
    assert result.exit_code == 1
    assert f"no spool at {spool_path}" in result.stderr
    assert not spool_path.exists()


def test_inspect_summary_as_json(spool_path: Path, mixed: dict[str, list[str]]) -> None:
    age(spool_path, 7200, "name = 'later'")
    before = snapshot(spool_path)
    # Not hexadecimal: the event ids in the output could contain any hex run.
    url = "https://collector.example/v1?token=zq-secret"
    result = cli(spool_path, "--url", url, "inspect", "--json")
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary["path"] == str(spool_path)
    assert summary["file_bytes"] >= spool_path.stat().st_size
    assert summary["schema_revision"] == schema.HEAD
    assert summary["counts"] == {"pending": 3, "leased": 1, "rejected": 2, "delivered": 4}
    assert summary["dropped"] == {"age": 0, "size": 0, "rejected": 2, "purged": 0}
    oldest = summary["oldest_pending"]
    assert oldest["id"] == mixed["pending"][0]
    assert 7190 < oldest["age_seconds"] < 7300
    assert summary["last_attempt"]["outcome"] == "delivered"
    assert summary["last_attempt"]["events"] == 6
    assert summary["url"] == "https://collector.example/v1?token=***"
    assert "zq-secret" not in result.stdout
    assert snapshot(spool_path) == before  # inspecting changes nothing


def test_inspect_summary_for_people(spool_path: Path, mixed: dict[str, list[str]]) -> None:
    result = cli(spool_path, "--token", "t0p-secret", "inspect")
    assert result.exit_code == 0, result.output
    assert "3 pending (1 being sent), 2 rejected, 4 delivered" in result.stdout
    assert mixed["pending"][0] in result.stdout
    assert "t0p-secret" not in result.output


def test_inspect_events_filters(spool_path: Path, mixed: dict[str, list[str]]) -> None:
    def listed(*args: str) -> list[dict[str, Any]]:
        result = cli(spool_path, "inspect", "events", "--json", *args)
        assert result.exit_code == 0, result.output
        return [orjson.loads(line) for line in result.stdout.splitlines()]

    pending = listed()
    assert [e["id"] for e in pending] == mixed["pending"]
    assert {e["status"] for e in pending} == {"pending"}
    assert pending[0]["name"] == "later" and pending[0]["properties"] == {"i": 0}
    assert "leased_until" in pending[0] and "timestamp" in pending[0]
    rejected = listed("--status", "rejected")
    assert [e["id"] for e in rejected] == mixed["rejected"]
    assert {e["last_error"] for e in rejected} == {"bad plan"}
    assert len(listed("--status", "all")) == 9
    assert len(listed("--status", "all", "--name", "sent")) == 6
    assert len(listed("--status", "all", "--limit", "4")) == 4
    age(spool_path, 3 * 3600, "name = 'sent'")
    assert len(listed("--status", "all", "--since", "2h")) == 3
    assert len(listed("--status", "all", "--since", "2020-01-01T00:00:00")) == 9
    assert listed("--status", "all", "--since", "2999-01-01T00:00:00Z") == []


def test_inspect_events_table_and_bad_options(
    spool_path: Path, mixed: dict[str, list[str]]
) -> None:
    table = cli(spool_path, "inspect", "events", "--status", "rejected")
    assert table.exit_code == 0
    assert all(i in table.stdout for i in mixed["rejected"])
    assert "bad plan" in table.stdout
    assert cli(spool_path, "inspect", "events", "--status", "lost").exit_code == 2
    bad_since = cli(spool_path, "inspect", "events", "--since", "yesterday")
    assert bad_since.exit_code == 2
    assert "'yesterday' is neither an ISO-8601 time nor a duration" in bad_since.stderr
    for overflowing in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        out_of_range = cli(spool_path, "inspect", "events", "--since", overflowing)
        assert out_of_range.exit_code == 2, out_of_range.output
        assert "out of range" in out_of_range.stderr and "Traceback" not in out_of_range.output


def test_import_refuses_a_timestamp_with_no_utc_time(spool_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(
        b'{"name": "a", "timestamp": "0001-01-01T00:00:00+01:00"}\n'
        b'{"name": "b", "timestamp": "9999-12-31T23:59:59-01:00"}\n'
        b'{"name": "c"}\n'
    )
    result = cli(spool_path, "import", str(source))
    assert result.exit_code == 1, result.output
    assert "line 1: timestamp" in result.output and "line 2: timestamp" in result.output
    assert [r["name"] for r in rows(spool_path)] == ["c"]


def test_inspect_one_event(spool_path: Path, mixed: dict[str, list[str]]) -> None:
    result = cli(spool_path, "inspect", "event", mixed["rejected"][0])
    assert result.exit_code == 0
    event = orjson.loads(result.stdout)
    assert (event["id"], event["status"], event["last_error"]) == (
        mixed["rejected"][0],
        "rejected",
        "bad plan",
    )
    missing = cli(spool_path, "inspect", "event", "no-such-id")
    assert missing.exit_code == 1
    assert "no event with id no-such-id" in missing.stderr


def test_requeue_puts_rejected_events_back(
    spool_path: Path, mixed: dict[str, list[str]], collector: Any
) -> None:
    one = mixed["rejected"][0]
    result = cli(spool_path, "requeue", "--id", one)
    assert (result.exit_code, result.stdout.strip()) == (0, "requeued 1 rejected events")
    state = {r["id"]: r for r in rows(spool_path)}
    assert state[one]["status"] == 0 and state[one]["last_error"] is None
    assert state[mixed["rejected"][1]]["status"] == 2
    assert cli(spool_path, "requeue", "--name", "sent").stdout.strip() == (
        "requeued 1 rejected events"
    )
    flushed = cli(spool_path, "--url", collector.url, "flush")
    assert flushed.exit_code == 1  # one event is leased by another flusher
    assert set(mixed["rejected"]) <= {e["id"] for e in collector.accepted_events()}


def test_purge_needs_yes_and_counts_drops(spool_path: Path, mixed: dict[str, list[str]]) -> None:
    refused = cli(spool_path, "purge", "--status", "pending")
    assert refused.exit_code == 2
    assert "would delete 3 pending events; pass --yes" in refused.stderr
    assert len(rows(spool_path, "status = 0")) == 3
    assert cli(spool_path, "purge", "--yes").stdout.strip() == "purged 2 rejected events"
    assert cli(spool_path, "purge", "--status", "delivered", "--yes").exit_code == 0
    assert cli(spool_path, "purge", "--status", "all", "--name", "later", "--yes").exit_code == 0
    assert rows(spool_path) == []
    # Undelivered events count as purged drops (reported to the collector); delivered ones not.
    assert counters(spool_path)["dropped.purged"] == 5


def test_prune_dry_run_changes_nothing_then_prune(spool_path: Path) -> None:
    ids = track(spool_path, 10)
    age(spool_path, 7200, f"sent_id(id) IN ('{ids[0]}', '{ids[1]}', '{ids[2]}')")
    before = snapshot(spool_path)
    dry = cli(spool_path, "prune", "--dry-run", SQREEN_SPOOL_MAX_AGE="3600")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("would drop 3 events older than 1h (max_age), 0 over")
    assert snapshot(spool_path) == before
    real = cli(spool_path, "prune", SQREEN_SPOOL_MAX_AGE="3600")
    assert real.stdout.startswith("dropped 3 events older than 1h")
    assert [r["id"] for r in rows(spool_path)] == ids[3:]
    assert counters(spool_path)["dropped.age"] == 3


def test_prune_by_size(spool_path: Path) -> None:
    track(spool_path, 3000, pad="x" * 400)
    dry = cli(spool_path, "prune", "--dry-run", SQREEN_SPOOL_MAX_BYTES="600000")
    would = int(dry.stdout.split(", ")[1].split()[0])
    assert would > 0
    real = cli(spool_path, "prune", SQREEN_SPOOL_MAX_BYTES="600000")
    assert int(real.stdout.split(", ")[1].split()[0]) == would
    assert counters(spool_path)["dropped.size"] == would
    assert spool_path.stat().st_size <= 600_000


def test_import_reports_invalid_lines_and_keeps_the_rest(spool_path: Path, tmp_path: Path) -> None:
    lines = [
        b'{"name": "signup", "properties": {"plan": "pro"}, "timestamp": "2018-03-15T14:42:00"}',
        b'{"name": "login", "user_identifiers": {"email": "a@b.c"}, "timestamp": 1521124920.5}',
        b"{not json",
        b'{"name": "x", "propreties": {}}',
        b"",
        b'{"name": "x", "properties": {"m": [1, {}]}, "timestamp": "2018-03-15T15:42:00+01:00"}',
        b'{"name": "y", "timestamp": true}',
        b'"just a string"',
        b'{"name": "z", "user_identifiers": {"id": 7.5}}',
        b'{"name": "sq.action.block_ip"}',
        b'{"name": "p", "properties": {%s}}' % b", ".join(b'"p%d": %d' % (i, i) for i in range(17)),
        b'{"name": "ok", "user_identifiers": {"id": 7}}',
    ]
    source = tmp_path / "past.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = cli(spool_path, "import", str(source))
    assert result.exit_code == 1
    assert "imported 4 events" in result.stdout
    for number, reason in [
        (3, "not valid JSON"),
        (4, "unknown key(s) 'propreties'"),
        (7, "timestamp must be an ISO-8601 string or epoch seconds, not a boolean"),
        (8, "expected a JSON object, not a string"),
        (9, "user_identifiers must map str to str or int"),
        (10, "event names starting with 'sq.' are reserved"),  # the strict rules, always
        (11, "properties of event 'p' has 17 entries; at most 16"),
    ]:
        assert f"line {number}: {reason}" in result.stderr
    assert "7 invalid lines skipped" in result.stderr
    stored = [orjson.loads(r["payload"]) for r in rows(spool_path)]
    assert [(e["name"], e["timestamp"]) for e in stored] == [
        ("signup", "2018-03-15T14:42:00+00:00"),
        ("login", "2018-03-15T14:42:00.500000+00:00"),
        ("x", "2018-03-15T14:42:00+00:00"),
        ("ok", stored[3]["timestamp"]),
    ]
    assert stored[0]["properties"] == {"plan": "pro"}
    assert stored[3]["user_identifiers"] == {"id": 7}


def test_strict_import_writes_nothing_when_a_line_is_invalid(spool_path: Path) -> None:
    good = b'{"name": "ok"}\n' * 5
    result = cli(spool_path, "import", "--strict", "-", input=good + b'{"name": 5}\n' + good)
    assert result.exit_code == 1
    assert "line 6: event_name must be a str, not int" in result.stderr
    assert "nothing imported" in result.stderr
    assert not spool_path.exists() or rows(spool_path) == []
    clean = cli(spool_path, "import", "--strict", "-", input=good)
    assert clean.exit_code == 0
    assert len(rows(spool_path)) == 5


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (b"", 0, "imported 0 events"),
        (b"\n\n  \n", 0, "imported 0 events"),
        (bytes(range(256)) * 4, 1, "line 1: not valid JSON"),
        (b'{"name": "a"}\n\xff\xfe{"name"\n', 1, "line 2: not valid JSON"),
        (b"[]\n{}\n", 1, 'line 2: missing "name"'),
    ],
    ids=["empty", "blank", "binary", "bad-utf8", "wrong-types"],
)
def test_import_of_malformed_files(
    spool_path: Path, tmp_path: Path, content: bytes, code: int, message: str
) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(content)
    result = cli(spool_path, "import", str(source))
    assert result.exit_code == code, result.output
    assert message in result.output


def test_import_of_a_missing_file(spool_path: Path, tmp_path: Path) -> None:
    result = cli(spool_path, "import", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and "No such file" in result.stderr


def test_migrate_prints_revisions(spool_path: Path) -> None:
    first = cli(spool_path, "migrate")
    assert first.stdout.strip() == f"{spool_path}: (empty) -> {schema.HEAD}"
    again = cli(spool_path, "migrate")
    assert again.stdout.strip() == f"{spool_path}: {schema.HEAD} -> {schema.HEAD}"


@pytest.mark.parametrize("args", [["inspect"], ["prune"], ["flush"], ["inspect", "events"]])
def test_a_corrupt_spool_is_one_line_and_left_in_place(spool_path: Path, args: list[str]) -> None:
    spool_path.parent.mkdir(parents=True)
    spool_path.write_bytes(b"this is not a database, " * 200)
    result = cli(spool_path, "--url", "http://127.0.0.1:9/", *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {spool_path}: file is not a database"
    assert spool_path.read_bytes().startswith(b"this is not a database")


def test_a_locked_spool_times_out_with_one_line(spool_path: Path) -> None:
    track(spool_path, 1)
    with sqlite3.connect(spool_path, isolation_level=None) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        result = cli(spool_path, "prune", SQREEN_SPOOL_LOCK_TIMEOUT="0.2")
        conn.execute("ROLLBACK")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {spool_path}: database is locked"


def test_verbose_shows_the_traceback(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    spool_path.write_bytes(b"garbage" * 600)
    result = cli(spool_path, "-v", "inspect")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "no collector URL: pass --url or set SQREEN_URL"),
        ("ftp://x.example/", "expected an http:// or https:// URL"),
        ("http://collector.example/", "plain http to a non-loopback host"),
    ],
)
def test_flush_needs_a_usable_url(spool_path: Path, url: str | None, message: str) -> None:
    track(spool_path, 1)
    result = cli(spool_path, *(["--url", url] if url else []), "flush")
    assert result.exit_code == 2
    assert message in result.stderr


def test_flush_delivers_everything_ignoring_backoff(spool_path: Path, collector: Any) -> None:
    ids = track(spool_path, 2500)
    with sqlite3.connect(spool_path) as conn:  # rows that failed before and back off for an hour
        conn.execute(
            "INSERT INTO retries SELECT seq, 4, ?, 'HTTP 503' FROM events", (time.time() + 3600,)
        )
    result = cli(
        spool_path, "--url", collector.url, "--token", "s3cret", "flush", "--batch-size", "700"
    )
    assert result.exit_code == 0, result.output
    assert [len(r.batch["events"]) for r in collector.requests] == [700, 700, 700, 400]
    assert "delivered 2500 of 2500 pending" in result.stdout  # plain lines: not a terminal
    assert result.stdout.splitlines()[-1].startswith("delivered 2500, rejected 0, still pending 0")
    assert [e["id"] for e in collector.accepted_events()] == ids
    assert collector.requests[0].headers["Authorization"] == "Bearer s3cret"
    assert "s3cret" not in result.output


def test_flush_exits_1_when_the_collector_is_down(spool_path: Path, collector: Any) -> None:
    track(spool_path, 10)
    collector.stop()
    result = cli(spool_path, "--url", collector.url, "flush", SQREEN_SPOOL_RETRY_ATTEMPTS="1")
    assert result.exit_code == 1
    assert "still pending 10" in result.stdout
    assert "error: collector_unavailable: ConnectError" in result.stderr
    assert len(rows(spool_path, "attempts = 1")) == 10  # the attempt is on the rows


HOSTILE_TEXT = "[/x] [bold red]FAKE: 0 pending[/] \x1b[2J\x1b]0;owned\x07 \x9b31m"


@pytest.mark.slow
def test_stored_text_is_printed_as_text(spool_path: Path, collector: Any) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("[bold red]FAKE: 0 pending[/]", {"properties": {"v": HOSTILE_TEXT}})
    spooler.close()
    collector.respond_with(c.status(503), c.status(503), c.status(503))
    collector.default = lambda batch: Answer(503, HOSTILE_TEXT.encode())
    flushed = cli(spool_path, "--url", collector.url, "flush")
    assert flushed.exit_code == 1
    assert "\x1b" not in flushed.output and "\x9b" not in flushed.output
    for command in (("inspect",), ("inspect", "events")):
        shown = cli(spool_path, *command)
        assert shown.exit_code == 0, shown.output  # a MarkupError before
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    listing = cli(spool_path, "inspect", "events").stdout
    assert "[bold red]FAKE" in listing and "[/x]" in listing
    assert "\\u001b[2J" in listing and "\\x9b31m" in listing  # escaped, visibly


def test_inspecting_a_closed_spool_leaves_no_files_behind(spool_path: Path) -> None:
    spooler = sqreen.Spooler(path=spool_path)
    assert spooler.track("e")
    spooler.close()
    conn = readable(spool_path)
    ids = [event_id for (event_id,) in conn.execute("SELECT sent_id(id) FROM events")]
    conn.close()
    side = [Path(f"{spool_path}-wal"), Path(f"{spool_path}-shm")]
    assert not any(f.exists() for f in side)  # the last connection removed them
    for command in (("inspect",), ("inspect", "events"), ("inspect", "event", ids[0])):
        assert cli(spool_path, *command).exit_code == 0
        assert not any(f.exists() for f in side), command


def test_import_refuses_a_line_too_long_in_bounded_memory(spool_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    with source.open("wb") as out:
        out.write(b'{"name": "before"}\n')
        out.write(b'{"name": "huge", "properties": {"p": "' + b"x" * (93 * 1024 * 1024) + b'"}}\n')
        out.write(b'{"name": "after"}\n')
    tracemalloc.start()
    result = cli(spool_path, "import", str(source))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.exit_code == 1, result.output
    assert "line 2: longer than" in result.output
    assert [r["name"] for r in rows(spool_path)] == ["before", "after"]
    assert peak < 20 * 1024 * 1024, peak  # 1 GB before


def test_global_options_after_a_command_are_hoisted_unless_the_command_has_its_own() -> None:
    import typer

    from sqreen.cli.app import hoisted

    root = typer.main.get_command(app)
    assert hoisted(["flush", "--url", "u", "--timeout", "5"], root) == [
        "--url", "u", "flush", "--timeout", "5"]  # fmt: skip
    assert hoisted(["collect", "--token", "t"], root) == ["collect", "--token", "t"]
    assert hoisted(["inspect", "events", "--path=p", "--json"], root) == [
        "--path=p", "inspect", "events", "--json"]  # fmt: skip
    assert hoisted(["import", "--", "--url"], root) == ["import", "--", "--url"]
