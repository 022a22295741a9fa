"""``sqreen-spool``: operate a spool without writing Python.

Data goes to stdout, diagnostics to stderr; expected failures exit non-zero with one line, and a
traceback only with ``--verbose``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

import sqreen
from sqreen.config import Settings
from sqreen.errors import ConfigError, SpoolError
from sqreen.spooler import STORAGE_ERRORS
from sqreen.store import Store, describe

app = typer.Typer(help="Inspect and operate a sqreen-spool event spool.", no_args_is_help=True)
err = Console(stderr=True)


@dataclass
class Context:
    path: Path | None
    verbose: bool

    def settings(self) -> Settings:
        try:
            return Settings.resolve({"path": self.path})
        except ConfigError as exc:
            fail(exc, 2)

    def fail(self, exc: BaseException, code: int = 1) -> NoReturn:
        if self.verbose:
            err.print_exception()
        fail(exc, code)


def fail(exc: BaseException | str, code: int) -> NoReturn:
    message = exc if isinstance(exc, str) else describe(exc)
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sqreen-spool {sqreen.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Option(envvar="SQREEN_SPOOL_PATH", help="Spool file.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug output.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    # The CLI is an application, so unlike the library it may configure logging: the library's
    # own reports (a damaged spool moved aside, say) go to stderr.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    ctx.obj = Context(path, verbose)


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create the spool or bring its schema up to date; print the revisions before and after."""
    context: Context = ctx.obj
    store = Store(context.settings())
    try:
        before, after = store.migrate()
    except (*STORAGE_ERRORS, SpoolError) as exc:
        context.fail(exc)
    finally:
        store.close()
    typer.echo(f"{store.path}: {before or '(empty)'} -> {after}")


def main() -> None:
    """Console-script entry point."""
    app()
