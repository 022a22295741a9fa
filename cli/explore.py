"""``sqreen-spool explore FILE``: the Event Explorer over an event store, JSON lines or a spool,
with no collector running (``collect --store FILE --ui`` serves the same page)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from sqreen.collector.replay import BadSource, load_lines
from sqreen.storage.files import is_sqlite, read_only

from .common import USAGE, fail, required_token

UI_TOKEN = "SQREEN_UI_TOKEN"


def explore(
    file: Annotated[Path, typer.Argument(help="An event store, JSON lines of events, or a spool.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8760,
    spool: Annotated[Path | None, typer.Option(help="Also show this spool, read-only.")] = None,
    playbooks: Annotated[
        Path | None, typer.Option(help="The playbook file offered under 'Try a playbook'.")
    ] = None,
    ui_token: Annotated[
        str | None,
        typer.Option(
            envvar=UI_TOKEN,
            show_envvar=True,
            help="Require this token (needed with a --host beyond loopback).",
        ),
    ] = None,
    ui_token_file: Annotated[
        Path | None, typer.Option(help="Read the token from this file (its first line).")
    ] = None,
) -> None:
    """Serve the Event Explorer on http://HOST:PORT/ui/ until stopped."""
    token = required_token(ui_token, ui_token_file, host, "--ui-token", UI_TOKEN)
    try:
        from .asgi import run
    except ImportError:
        fail("explore needs uvicorn: pip install 'sqreen-spool[collector]'", USAGE)
    from sqreen.explorer.app import Explorer

    text = _playbooks(playbooks)
    with tempfile.TemporaryDirectory(prefix="sqreen-explore-") as scratch:
        store, spool = _source(file, Path(scratch), spool)
        print(f"the Event Explorer: http://{host}:{port}/ui/", flush=True)
        run(Explorer(store, token, text, spool), host, port)


def _playbooks(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--playbooks {path}: {getattr(exc, 'strerror', None) or exc}", USAGE)


def _source(file: Path, scratch: Path, spool: Path | None) -> tuple[Path | None, Path | None]:
    """The store to show (JSON lines loaded into a scratch one), and the spool."""
    try:
        sqlite = is_sqlite(file)
    except OSError as exc:
        fail(f"{file}: {exc.strerror or exc}", USAGE)
    if not sqlite:
        try:
            load_lines(file, scratch / "events.db")
        except BadSource as exc:
            fail(str(exc), USAGE)
        return scratch / "events.db", spool
    try:
        with contextlib.closing(read_only(file)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        fail(f"{file}: {exc}", USAGE)
    if "store_meta" in tables:
        return file, spool
    if "alembic_version" in tables:
        return None, file  # a spool: its side only
    fail(f"{file} is neither an event store nor a spool", USAGE)
