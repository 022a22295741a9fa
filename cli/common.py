"""What every command shares: the global options, settings, and how a command fails.

Data goes to stdout, diagnostics to stderr; expected failures exit non-zero with one line, and a
traceback only with ``--verbose``. Exit codes: 1 for a failure, 2 for a usage error.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy import Engine

from sqreen.config import Settings
from sqreen.errors import ConfigError
from sqreen.ops.report import check_readable
from sqreen.storage.failures import describe, storage_errors
from sqreen.storage.files import read_only_engine

USAGE = 2

err = Console(stderr=True, soft_wrap=True, highlight=False)


# Control characters (C0, DEL, C1) in stored text or a collector's answer would reach the
# terminal as escape sequences (clearing it, setting its title): they are shown escaped.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09,)}


def plain(text: object) -> str:
    """``text`` safe to print: its control characters escaped (print it with markup off)."""
    return str(text).translate(_CONTROLS)


def shown(text: object) -> Text:
    """``text`` for a Rich table cell: as text, never read as markup (``[/]``, ``[link=...]``
    in a collector's action or a stored event would otherwise crash or inject), escaped."""
    return Text(plain(text))


def required_token(
    token: str | None, token_file: Path | None, host: str, option: str, variable: str
) -> str | None:
    """The token every request must carry (``option``, or its ``-file`` twin); exit with one
    line when it is empty, or missing while ``host`` reaches beyond loopback: anyone there
    could use the server."""
    if token_file is not None:
        try:
            lines = token_file.read_text().splitlines()
        except OSError as exc:
            fail(f"{option}-file {token_file}: {exc.strerror or exc}", USAGE)
        token = lines[0] if lines else ""  # stripped below, as a token from anywhere
    if token is not None and not token.strip():
        fail("the token is empty", USAGE)
    if token is None and not loopback(host):
        fail(
            f"--host {host} reaches beyond this machine: set {option} (or {option}-file, or "
            f"{variable}), which every request must carry",
            USAGE,
        )
    return None if token is None else token.strip()


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Every command that reports takes --json: one JSON object on stdout, its keys documented in
# docs/cli.md (listings print one object per line).
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")]


def said(json: bool, document: dict[str, Any], text: str) -> None:
    """Report a command's outcome: ``document`` as one JSON line with --json, else ``text``."""
    typer.echo(orjson.dumps(document).decode() if json else text)


def fail(exc: BaseException | str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    message = exc if isinstance(exc, str) else describe(exc)
    err.print(f"error: {plain(message)}", markup=False)
    raise typer.Exit(code)


@dataclass
class Context:
    """The global options, as every command receives them (``ctx.obj``)."""

    path: Path | None
    url: str | None
    token: str | None
    verbose: bool

    def settings(self, **overrides: Any) -> Settings:
        """Settings from the global options, ``overrides``, the environment and defaults."""
        options = {"path": self.path, "url": self.url, "token": self.token, **overrides}
        try:
            return Settings.resolve(options)
        except ConfigError as exc:
            fail(exc, USAGE)

    def existing(self, **overrides: Any) -> Settings:
        """Settings for a spool that must already exist and be readable by this version."""
        settings = self.settings(**overrides)
        with self.reader(settings):
            pass
        return settings

    @contextlib.contextmanager
    def reader(self, settings: Settings) -> Iterator[Engine]:
        """A read-only engine on the spool, once it is known to exist and be readable by this
        version; storage errors become one line.

        Read-only, so that a command never creates a spool, nor moves a damaged one aside, as
        opening it for writing would.
        """
        if not settings.path.is_file():
            fail(f"no spool at {settings.path}")
        engine = read_only_engine(settings.path, settings.lock_timeout)
        try:
            with self.errors(settings.path):
                with engine.connect() as conn:
                    check_readable(conn)
                yield engine
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def errors(self, path: Path | None = None) -> Iterator[None]:
        """Turn storage and configuration errors into one line (naming ``path``) and an exit
        code."""
        try:
            yield
        except ConfigError as exc:
            self.fail(exc, USAGE)
        except storage_errors() as exc:  # SpoolError among them
            self.fail(exc, 1, f"{path}: " if path is not None else "")

    def fail(self, exc: BaseException, code: int = 1, prefix: str = "") -> NoReturn:
        if self.verbose:
            err.print_exception()
        fail(f"{prefix}{describe(exc)}", code)
