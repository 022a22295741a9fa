"""sqreen.start(): the one call at boot, with the agent's settings file, in a real gunicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import sqreen
from sqreen import default

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def test_start_opens_the_spool_and_starts_the_threads_before_any_track(spool_path: Path) -> None:
    spooler = sqreen.start(path=spool_path)
    assert spool_path.exists()  # opened (and migrated) now, not at the first track()
    assert sqreen.start(path=spool_path) is spooler  # again, with the same settings: harmless
    with pytest.raises(sqreen.ConfigError, match="already called with other settings"):
        sqreen.start(path=spool_path, heartbeat_delay=5)
    assert sqreen.track("after.start")
    assert default.current_spooler() is spooler


def test_a_bad_setting_raises_at_start(spool_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQREEN_HEARTBEAT_DELAY", "often")
    with pytest.raises(sqreen.ConfigError, match="SQREEN_HEARTBEAT_DELAY"):
        sqreen.start(path=spool_path)
    assert not spool_path.exists()


def test_the_agents_settings_file(
    spool_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = tmp_path / "sqreen.ini"
    ini.write_text(
        f"[sqreen]\ntoken = abc\napp_name = shop\nspool_path = {spool_path}\n"
        "heartbeat_delay = 7\nstrip_sensitive_data = false\n"
    )
    monkeypatch.setenv("SQREEN_CONFIG_FILE", str(ini))
    monkeypatch.setenv("SQREEN_HEARTBEAT_DELAY", "9")  # the file comes before the environment
    spooler = sqreen.start(shutdown_timeout=1)  # and keyword arguments before the file
    assert spooler.settings.path == spool_path
    assert spooler.settings.token == "abc" and spooler.settings.heartbeat_delay == 7
    assert spooler.settings.strip_sensitive_data is False
    assert spooler.settings.shutdown_timeout == 1
    ini.write_text("not an ini file")
    with pytest.raises(sqreen.ConfigError, match="cannot be read as a settings file"):
        sqreen.start(shutdown_timeout=1)
    monkeypatch.setenv("SQREEN_CONFIG_FILE", str(tmp_path / "missing.ini"))
    with pytest.raises(sqreen.ConfigError, match="is not a file"):
        sqreen.start()


APP = """
import sqreen
sqreen.start()

def app(environ, start_response):
    ok = sqreen.track("request")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"stored" if ok else b"not stored"]
"""


def gunicorn(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    (tmp_path / "wsgi_app.py").write_text(APP)
    port = _free_port()
    return subprocess.Popen(
        [GUNICORN, "--workers", "2", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path),
         "--timeout", "30", "wsgi_app:app"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_a_gunicorn_worker_with_a_bad_setting_fails_at_boot(tmp_path: Path) -> None:
    server = gunicorn(tmp_path, {"SQREEN_SPOOL_PATH": str(tmp_path / "s.db"),
                                 "SQREEN_HEARTBEAT_DELAY": "often"})  # fmt: skip
    _, errors = server.communicate(timeout=60)
    assert server.returncode != 0  # the workers fail to boot: no request ever reaches one
    assert "ConfigError" in errors and "SQREEN_HEARTBEAT_DELAY" in errors
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow
def test_gunicorn_workers_boot_with_the_spool_open(tmp_path: Path) -> None:
    spool = tmp_path / "s.db"
    server = gunicorn(tmp_path, {"SQREEN_SPOOL_PATH": str(spool)})
    try:
        port = server.args[4].split(":")[1]
        deadline = time.monotonic() + 30
        while not spool.exists():  # opened at boot, before any request
            assert time.monotonic() < deadline and server.poll() is None, server.stderr
            time.sleep(0.05)
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert answer.text == "stored"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_inspect_shows_what_each_process_is_doing(spool_path: Path, tmp_path: Path) -> None:
    from .test_cli_processes import SCRIPT

    code = (
        "import sqreen, sys, time\n"
        f"s = sqreen.Spooler(path={str(spool_path)!r}, url='http://127.0.0.1:9/', "
        "heartbeat_delay=0.2, retry_attempts=1)\n"
        "s.track('x'); print('ready', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while True:
            shown = subprocess.run([SCRIPT, "--path", str(spool_path), "inspect"],
                                   capture_output=True, text=True, timeout=30).stdout  # fmt: skip
            if f"pid {child.pid}: http://127.0.0.1:9/" in shown and "last delivery" in shown:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert "next at" in shown and "not set (SQREEN_URL)" not in shown
    finally:
        child.kill()
        child.wait()
    time.sleep(0.1)
    gone = subprocess.run([SCRIPT, "--path", str(spool_path), "inspect", "--json"],
                          capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    import orjson

    assert orjson.loads(gone)["processes"] == []  # its pid no longer runs: it drops out
