"""``sqreen-spool``: operate a spool without writing Python.

Every command runs the library's own code (delivery, pruning, validation); this module only
parses options and prints. See :mod:`sqreen.cli.common` for output and exit-code conventions.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import sqreen
from sqreen.delivery.make import make_flusher
from sqreen.delivery.result import FlushResult
from sqreen.health import Health
from sqreen.ops import admin, report
from sqreen.ops.importer import bounded_lines, import_lines
from sqreen.ops.selection import Selection, status_choices
from sqreen.storage.outbox import Outbox
from sqreen.storage.prune import preview, prune
from sqreen.storage.store import Store

from . import actions, collect, explore, playbook, show, tail, top
from .common import USAGE, Context, Json, err, fail, plain, said
from .progress import reading

app = typer.Typer(
    help="Inspect and operate a sqreen-spool event spool.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: flags as flags, values as NAME, no type placeholders or raw markup.
    rich_markup_mode=None,
)
app.add_typer(show.app, name="inspect")
app.add_typer(actions.app, name="actions")
app.add_typer(playbook.app, name="playbook")

# Invalid lines of an import reported one by one before the rest are only counted.
SHOWN_INVALID_LINES = 50


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
    url: Annotated[
        str | None, typer.Option(envvar="SQREEN_URL", help="Collector URL (for flush).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="SQREEN_TOKEN", help="Collector bearer token.", show_default=False),
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
    # own reports (a collector failing, events dropped) go to stderr.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    ctx.obj = Context(path, url, token, verbose)


@app.command()
def migrate(ctx: typer.Context, json: Json = False) -> None:
    """Create the spool or bring its schema up to date; print the revisions before and after.

    JSON: path, before (null for a new spool), after."""
    context: Context = ctx.obj
    settings = context.settings()
    with context.errors(settings.path), Store(settings) as store:
        before, after = store.migrate()
    document = {"path": str(store.path), "before": before, "after": after}
    said(json, document, f"{store.path}: {before or '(empty)'} -> {after}")


@app.command()
def flush(
    ctx: typer.Context,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Events per POST.")] = None,
    json: Json = False,
) -> None:
    """Deliver every pending event now, ignoring the backoff of failed ones.

    Safe while the application runs: rows another flusher holds are left to it. Exit 0 when
    nothing is left pending, 1 when events remain. JSON: delivered, rejected, pending,
    seconds, error.
    """
    context: Context = ctx.obj
    settings = context.existing(batch_size=batch_size)
    if settings.url is None:
        fail("no collector URL: pass --url or set SQREEN_URL", USAGE)
    health = Health(log_interval=None)  # reported below
    with context.errors(settings.path), Store(settings) as store:
        flusher = make_flusher(settings, Outbox(store), health)
        assert flusher is not None
        try:
            pending = store.count_pending()
            started = time.monotonic()
            with _progress(pending, quiet=json) as progress:
                result = flusher.flush(timeout, ignore_backoff=True, progress=progress)
        finally:
            flusher.close()
    elapsed = time.monotonic() - started
    last_error = health.report().last_error if result.pending else None
    document = {
        "delivered": result.delivered,
        "rejected": result.rejected,
        "pending": result.pending,
        "seconds": round(elapsed, 3),
        "error": last_error,
    }
    said(
        json,
        document,
        f"delivered {result.delivered}, rejected {result.rejected}, "
        f"still pending {result.pending} ({elapsed:.1f} s)",
    )
    if result.pending:
        if last_error is not None:
            fail(last_error)
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress(total: int, quiet: bool = False) -> Iterator[Any]:
    """A progress callback: a Rich bar on a terminal, else one plain line per batch (none
    with ``quiet``: --json keeps stdout to its one object)."""
    if quiet:
        yield lambda done: None
        return
    if not sys.stdout.isatty():
        yield lambda done: typer.echo(
            f"delivered {done.delivered + done.rejected} of {total} pending"
        )
        return
    columns = (TextColumn("delivering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("flush", total=total)

        def update(done: FlushResult) -> None:
            bar.update(task, completed=done.delivered + done.rejected)

        yield update


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be dropped; change nothing.")
    ] = False,
    json: Json = False,
) -> None:
    """Apply the age and size limits now and say what was dropped. JSON: dry_run, age,
    size."""
    context: Context = ctx.obj
    settings = context.existing()
    with context.errors(settings.path):
        if dry_run:
            dropped = preview(settings)
        else:
            with Store(settings) as store:
                dropped = prune(store, settings)
    verb = "would drop" if dry_run else "dropped"
    said(
        json,
        {"dry_run": dry_run, "age": dropped["age"], "size": dropped["size"]},
        f"{verb} {dropped['age']} events older than {show.duration(settings.max_age)} "
        f"(max_age), {dropped['size']} over {show.size(settings.max_bytes)} (max_bytes)",
    )


Status = Annotated[str, typer.Option(help=f"One of: {status_choices()}.")]
Name = Annotated[str | None, typer.Option(help="Only events with this name.")]
Ids = Annotated[list[str] | None, typer.Option("--id", help="Only this event id (repeatable).")]


def _selection(status: str, name: str | None, ids: list[str] | None) -> Selection:
    try:
        return Selection.of(status, name, ids or ())
    except ValueError as exc:
        fail(exc, USAGE)


@app.command()
def requeue(
    ctx: typer.Context,
    status: Status = "rejected",
    name: Name = None,
    ids: Ids = None,
    json: Json = False,
) -> None:
    """Put rejected (or delivered) events back to pending, e.g. after a collector fix. JSON:
    requeued, status."""
    context: Context = ctx.obj
    if status not in ("rejected", "delivered"):
        fail("requeue takes --status rejected or --status delivered", USAGE)
    settings = context.existing()
    with context.errors(settings.path), Store(settings) as store:
        moved = admin.requeue(store, _selection(status, name, ids))
    said(json, {"requeued": moved, "status": status}, f"requeued {moved} {status} events")


@app.command()
def purge(
    ctx: typer.Context,
    status: Status = "rejected",
    name: Name = None,
    ids: Ids = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
    json: Json = False,
) -> None:
    """Delete events for good; undelivered ones are counted as dropped (purged). JSON:
    purged, status."""
    context: Context = ctx.obj
    selection = _selection(status, name, ids)
    if not yes:
        with context.reader(context.settings()) as engine:
            matching = report.count(engine, selection)
        fail(f"would delete {matching} {status} events; pass --yes to delete them", USAGE)
    settings = context.existing()
    with context.errors(settings.path), Store(settings) as store:
        deleted = admin.purge(store, selection)
    said(json, {"purged": deleted, "status": status}, f"purged {deleted} {status} events")


@app.command("import")
def import_command(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSON-lines file, or - for stdin.")],
    strict: Annotated[
        bool, typer.Option("--strict", help="Import nothing if any line is invalid.")
    ] = False,
    json: Json = False,
) -> None:
    """Track past events from JSON lines: {"name", "properties", "user_identifiers",
    "timestamp"} per line, timestamp in ISO-8601 or epoch seconds.

    Invalid lines are reported with their numbers and skipped. Exit 0 when every line was
    imported, 1 when any was invalid. A progress bar on a terminal, a line per 10% otherwise
    (on stderr). JSON: imported, invalid, dropped, seconds.
    """
    context: Context = ctx.obj
    settings = context.settings()
    shown = 0

    def report(number: int, reason: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= SHOWN_INVALID_LINES:
            err.print(f"line {number}: {plain(reason)}", markup=False)

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(_input(file))
        if strict:
            # Checked first, then imported: standard input is kept in a temporary file between.
            copy = source if source.seekable() else stack.enter_context(tempfile.TemporaryFile())
            checked = import_lines(None, _copied(bounded_lines(source), source, copy), report)
            if checked.invalid:
                _invalid_summary(checked.invalid)
                fail(f"nothing imported: {checked.invalid} invalid lines (--strict)")
            copy.seek(0)
            source = copy
        with context.errors(settings.path), Store(settings) as store:
            lines = reading(source, bounded_lines(source), quiet=json)
            result = import_lines(store, stack.enter_context(lines), report, settings.max_bytes)
    elapsed = time.monotonic() - started
    rate = f", {result.valid / elapsed:,.0f} events/s" if result.valid >= 1000 else ""
    document = {
        "imported": result.valid,
        "invalid": result.invalid,
        "dropped": result.dropped,
        "seconds": round(elapsed, 3),
    }
    said(
        json,
        document,
        f"imported {result.valid} events into {settings.path} ({elapsed:.2f} s{rate})",
    )
    if result.dropped:
        err.print(f"warning: the size limit dropped {result.dropped} of the oldest events")
    if result.invalid:
        _invalid_summary(result.invalid)
        raise typer.Exit(1)


@contextlib.contextmanager
def _input(file: str) -> Iterator[IO[bytes]]:
    if file == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(file, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    with handle:
        yield handle


def _copied(
    lines: Iterator[bytes | None], source: IO[bytes], copy: IO[bytes]
) -> Iterator[bytes | None]:
    for line in lines:
        if copy is not source:  # a line too long is invalid, and so never imported
            copy.write(b"\n" if line is None else line)
        yield line


def _invalid_summary(invalid: int) -> None:
    hidden = invalid - SHOWN_INVALID_LINES
    more = f" ({hidden} not shown)" if hidden > 0 else ""
    err.print(f"{invalid} invalid lines skipped{more}")


app.command()(collect.collect)
app.command()(explore.explore)
app.command()(top.top)
app.command()(tail.tail)


# The global options, also accepted after the command's name (``flush --url ...``): each with
# whether it takes a value.
GLOBAL_OPTIONS = {"--path": True, "--url": True, "--token": True, "--verbose": False, "-v": False}


def hoisted(argv: list[str], root: Any) -> list[str]:
    """``argv`` with the global options found after the command's name moved before it, where
    Click reads them, unless that command has an option of the same name (``collect
    --token`` is the collector's own). ``--`` ends the options; an option's value goes with
    it."""
    front: list[str] = []
    rest: list[str] = []
    command, own = root, set[str]()
    words = iter(argv)
    for word in words:
        if word == "--":
            rest += [word, *words]
            break
        name, equals, _ = word.partition("=")
        moved = name in GLOBAL_OPTIONS and name not in own
        if moved or (not rest and word.startswith("-")):
            front.append(word)
            if moved and GLOBAL_OPTIONS[name] and not equals:
                front.extend(itertools.islice(words, 1))  # its value, when there is one
            continue
        rest.append(word)
        sub = getattr(command, "commands", {}).get(word)
        if sub is not None:  # the command (or a group's subcommand) named here
            command = sub
            own |= {opt for param in sub.params for opt in getattr(param, "opts", ())}
    return front + rest


def _metavars(command: Any) -> None:
    """Name every value the way Click's help does (``--status STATUS``, ``FILE``), instead of
    a type placeholder."""
    for param in command.params:
        flag = getattr(param, "is_flag", False)  # Typer's own Click: duck-typed
        if param.metavar is None and not flag and param.name:
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        _metavars(sub)


def main() -> None:
    """Console-script entry point."""
    command = typer.main.get_command(app)
    _metavars(command)
    command.main(args=hoisted(sys.argv[1:], command), prog_name="sqreen-spool")
