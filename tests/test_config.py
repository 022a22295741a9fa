"""Settings: arguments over environment over defaults, and clear errors for malformed values."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import sqreen
from sqreen.cli.app import app
from sqreen.config import Settings
from sqreen.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.resolve()
    assert settings.path == tmp_path / "state" / "sqreen" / "spool.db"
    assert settings.durability == "process"
    assert settings.lock_timeout == 5.0
    assert settings.strict is False


def test_environment_then_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SQREEN_SPOOL_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("SQREEN_SPOOL_DURABILITY", "POWER")
    monkeypatch.setenv("SQREEN_SPOOL_LOCK_TIMEOUT", "0.5")
    settings = Settings.resolve()
    assert (settings.path, settings.durability, settings.lock_timeout) == (
        tmp_path / "env.db",
        "power",
        0.5,
    )
    settings = Settings.resolve({"path": tmp_path / "arg.db", "durability": "process"})
    assert (settings.path, settings.durability) == (tmp_path / "arg.db", "process")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("1", True), ("TRUE", True), ("yes", True), ("On", True), (" on ", True)],
        *[("0", False), ("false", False), ("NO", False), ("off", False)],
    ],
)
def test_booleans(monkeypatch: pytest.MonkeyPatch, text: str, expected: bool) -> None:
    monkeypatch.setenv("SQREEN_SPOOL_STRICT", text)
    assert Settings.resolve().strict is expected


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SQREEN_SPOOL_STRICT", "maybe", "SQREEN_SPOOL_STRICT: invalid value 'maybe'"),
        ("SQREEN_SPOOL_DURABILITY", "disk", "expected one of process, power"),
        ("SQREEN_SPOOL_LOCK_TIMEOUT", "soon", "SQREEN_SPOOL_LOCK_TIMEOUT: invalid value 'soon'"),
        ("SQREEN_SPOOL_LOCK_TIMEOUT", "-1", "not a duration"),
        ("SQREEN_SHUTDOWN_TIMEOUT", "nan", "SQREEN_SHUTDOWN_TIMEOUT"),
        ("SQREEN_HEARTBEAT_DELAY", "0", "at least 0.1 seconds: a shorter heartbeat keeps a core"),
        ("SQREEN_SPOOL_LOCK_TIMEOUT", "0", "at least 0.01 seconds"),
        ("SQREEN_SPOOL_LEASE", "0.5", "expires while its batch is still being sent"),
        ("SQREEN_SPOOL_HTTP_TIMEOUT", "0", "fails every request"),
        ("SQREEN_SPOOL_MAX_AGE", "0", "drops every event"),
        ("SQREEN_SPOOL_MAX_AGE", "1e300", "ten years"),
        ("SQREEN_SPOOL_KEEP_DELIVERED", "11000d", "ten years"),
        ("SQREEN_TRUSTED_PROXIES", "0", "hop count from 1"),
        ("SQREEN_TRUSTED_PROXIES", "proxy.local", "neither a hop count"),
        ("SQREEN_SPOOL_WIDEST_BLOCK", "8", "two prefix lengths"),
        ("SQREEN_SPOOL_WIDEST_BLOCK", "8,200", "at most 128"),
    ],
)
def test_malformed_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(sqreen.ConfigError, match=message.replace("(", r"\(")):
        sqreen.Spooler()


def test_malformed_and_unknown_arguments() -> None:
    with pytest.raises(sqreen.ConfigError, match="argument 'strict': invalid value 'yes please'"):
        sqreen.Spooler(strict="yes please")
    with pytest.raises(sqreen.ConfigError, match="argument 'lock_timeout'"):
        sqreen.Spooler(lock_timeout=True)
    with pytest.raises(sqreen.ConfigError, match="unknown setting"):
        sqreen.Spooler(max_byts=10)


def test_a_token_from_a_file_loses_its_newline(spool_path: Path, collector: Any) -> None:
    spooler = sqreen.Spooler(path=spool_path, url=collector.url, token="  s3cret-token\n")
    assert spooler.track("e")
    spooler.close()  # the exit flush (or the background thread before it) delivers it
    assert len(collector.accepted_events()) == 1
    assert collector.requests[-1].headers["Authorization"] == "Bearer s3cret-token"


@pytest.mark.parametrize("token", ["s3cret\x01tail", "s3crét-tøken", b"s3cret-bytes"])
def test_a_token_a_header_cannot_carry_is_refused_without_being_echoed(token: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.resolve({"token": token})
    assert "s3cr" not in str(caught.value) and "token" in str(caught.value)


def test_the_cli_refuses_a_bad_token_in_one_line(spool_path: Path) -> None:
    result = CliRunner().invoke(app, ["--path", str(spool_path), "--token", "s3crét", "inspect"])
    assert result.exit_code == 2
    assert "s3cr" not in result.output and "Traceback" not in result.output


def test_url_credentials_never_reach_a_log_or_repr(
    spool_path: Path, collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = collector.url.replace("http://", "http://user:PASSWD99@") + "?api_token=SECRET42"
    caplog.set_level(logging.DEBUG)
    spooler = sqreen.Spooler(path=spool_path, url=url)
    assert "PASSWD99" not in repr(spooler.settings) and "SECRET42" not in repr(spooler.settings)
    assert spooler.track("e")
    spooler.close()
    assert len(collector.accepted_events()) == 1
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP Request: POST" in logged  # httpx's own line, with the URL masked
    assert "PASSWD99" not in logged and "SECRET42" not in logged
    sent = collector.requests[-1].headers["Authorization"]
    assert base64.b64decode(sent.split()[1]) == b"user:PASSWD99"  # as an auth header


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("3d", 259200.0),
        ("1w", 604800.0),
        (" 1.5D ", 129600.0),
    ],
)
def test_duration_settings_take_units(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    monkeypatch.setenv("SQREEN_SPOOL_MAX_AGE", text)
    assert Settings.resolve().max_age == seconds


@pytest.mark.slow
def test_an_idle_spooler_with_the_shortest_heartbeat_does_not_spin(spool_path: Path) -> None:
    """SQREEN_HEARTBEAT_DELAY=0 kept a core busy (2-3 CPU-seconds per 3 s); the shortest
    accepted heartbeat costs an idle process little."""
    spooler = sqreen.Spooler(path=spool_path, heartbeat_delay=0.1, url="http://127.0.0.1:9")
    assert spooler.track("e")
    before = time.process_time()
    time.sleep(2)
    used = time.process_time() - before
    spooler.close()
    assert used < 1.0, f"{used:.2f} CPU-seconds in 2 s idle"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("67108864", 67108864),
        ("64MiB", 67108864),
        ("512 KiB", 524288),
        ("1GB", 10**9),
        ("1.5MiB", 1572864),
        ("100", 100),
    ],
)
def test_size_settings_take_units(monkeypatch: pytest.MonkeyPatch, text: str, size: int) -> None:
    monkeypatch.setenv("SQREEN_SPOOL_MAX_BYTES", text)
    assert Settings.resolve().max_bytes == size


@pytest.mark.parametrize("text", ["0", "x", "1XB", "-1", "64 MiBs"])
def test_malformed_sizes_are_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("SQREEN_SPOOL_MAX_BATCH_BYTES", text)
    with pytest.raises(ConfigError, match="SQREEN_SPOOL_MAX_BATCH_BYTES"):
        Settings.resolve()


def test_one_duration_parser_for_settings_and_the_cli(spool_path: Path) -> None:
    from sqreen.ops.selection import parse_since

    assert parse_since("1w", now=1_000_000.0) == 1_000_000.0 - 604800
    assert parse_since("90", now=1000.0) == 910.0
    assert parse_since("2026-12-04T00:00:00Z") == 1796342400.0
    result = CliRunner().invoke(
        app, ["--path", str(spool_path), "actions", "block-user", "a=b", "--duration", "1w"]
    )
    assert result.exit_code == 0, result.output
