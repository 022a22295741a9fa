"""Settings: arguments over environment over defaults, and clear errors for malformed values."""

from __future__ import annotations

from pathlib import Path

import pytest

import sqreen
from sqreen.config import Settings


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
        ("SQREEN_SPOOL_LOCK_TIMEOUT", "-1", "finite number of seconds >= 0"),
        ("SQREEN_SHUTDOWN_TIMEOUT", "nan", "SQREEN_SHUTDOWN_TIMEOUT"),
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
