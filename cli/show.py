"""``sqreen-spool inspect``: what is in a spool, read-only.

Tables for people, ``--json`` for programs. Listings stream: rows are printed page by page as
the library reads them, so memory does not grow with the spool.
"""

from __future__ import annotations

import sys
from itertools import islice
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from sqreen.ops import report
from sqreen.ops.selection import Selection, parse_since, status_choices
from sqreen.storage.files import file_bytes
from sqreen.wire import iso

from .common import USAGE, Context, fail, shown

app = typer.Typer(help="Show what is in the spool (changes nothing).", rich_markup_mode=None)
out = Console(highlight=False)
if not out.is_terminal:
    # Piped or redirected: no terminal width to fit, so do not cut ids short.
    out = Console(highlight=False, width=200)

ROWS_PER_TABLE = 100


@app.callback(invoke_without_command=True)
def summary(
    ctx: typer.Context,
    json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Summarize the spool: counts, drops, oldest pending event, last delivery attempt."""
    if ctx.invoked_subcommand is not None:
        return
    context: Context = ctx.obj
    settings = context.settings()
    with context.reader(settings) as engine:
        found = report.summarize(
            engine, settings.path, file_bytes(settings.path), settings.url, bool(settings.token)
        )
    if json:
        typer.echo(orjson.dumps(found.as_dict()).decode())
        return
    counts, dropped = found.counts, found.dropped
    lines = {
        "spool": f"{found.path} ({size(found.file_bytes)}, schema {found.schema_revision})",
        "events": f"{counts['pending']} pending ({counts['leased']} being sent), "
        f"{counts['rejected']} rejected, {counts['delivered']} delivered (kept)",
        "dropped": ", ".join(f"{n} {reason}" for reason, n in dropped.items())
        + _unreported(found.dropped_unreported),
        "security dropped": ", ".join(
            f"{n} {reason}" for reason, n in found.dropped_security.items()
        ),
        "oldest pending": _oldest(found.oldest_pending),
        "last attempt": _attempt(found.last_attempt),
        "failures": ", ".join(f"{n} {kind}" for kind, n in found.failures.items()) or "none",
    }

    if found.last_failure is not None:
        lines["last failure"] = f"{found.last_failure['at']} {found.last_failure['error']}"
    rows = list(lines.items())
    told = [process_line(p) for p in found.processes]
    told = told or ["none recorded (each records itself every heartbeat)"]
    rows += [("processes" if not number else "", text) for number, text in enumerate(told)]
    table = Table.grid(padding=(0, 2))
    for key, value in rows:
        table.add_row(key, shown(value))
    out.print(table)


def process_line(process: dict[str, Any]) -> str:
    """One process's line: who, where it delivers, its last and next delivery."""
    last = process.get("last_delivery") or {}
    when = "" if not last else f"; last delivery {iso(last['at'])}: {last['outcome']}"
    upcoming = process.get("next_delivery_at")
    after = "" if upcoming is None else f"; next at {iso(upcoming)}"
    where = process.get("destination") or "nothing to deliver to (no SQREEN_URL)"
    return f"{process.get('host')} pid {process.get('pid')}: {where}{when}{after}"


@app.command("events")
def list_events(
    ctx: typer.Context,
    status: Annotated[str, typer.Option(help=f"One of: {status_choices()}.")] = "pending",
    name: Annotated[str | None, typer.Option(help="Only events with this name.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Entered the spool since: ISO-8601 time or 90s, 15m, 2h, 3d."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List events, oldest first."""
    context: Context = ctx.obj
    try:
        selection = Selection.of(status, name, since=None if since is None else parse_since(since))
    except ValueError as exc:
        fail(exc, USAGE)
    settings = context.settings()
    with context.reader(settings) as engine:
        found = report.events(engine, selection, limit)
        if json:
            for record in found:
                typer.echo(orjson.dumps(record).decode())
            return
        first = True
        while page := list(islice(found, ROWS_PER_TABLE)):
            out.print(_table(page, show_header=first))
            first = False
        if first:
            typer.echo(f"no {status} events")


@app.command("event")
def show_event(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(metavar="ID")],
    raw: Annotated[
        bool, typer.Option("--raw", help="The stored JSON byte for byte, as it is delivered.")
    ] = False,
) -> None:
    """One event, as pretty JSON with its delivery state."""
    context: Context = ctx.obj
    settings = context.settings()
    with context.reader(settings) as engine:
        found = report.stored_bytes(engine, event_id) if raw else report.find(engine, event_id)
    if found is None:
        fail(f"no event with id {event_id} in {settings.path}")
    if isinstance(found, bytes):
        sys.stdout.buffer.write(found + b"\n")
        return
    typer.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())


def _table(records: list[dict[str, Any]], show_header: bool) -> Table:
    # Fixed widths, so that the tables of successive pages line up as one.
    table = Table(show_header=show_header, box=None, pad_edge=False)
    for column, width in (("enqueued", 19), ("status", 9), ("name", 24), ("id", 36)):
        table.add_column(column, min_width=width, max_width=width, no_wrap=True)
    table.add_column("properties / last error", no_wrap=True, overflow="ellipsis")
    for record in records:
        detail = orjson.dumps(record.get("properties", {})).decode()
        if "last_error" in record:
            detail = f"{detail}  [{record.get('attempts', 0)} attempts] {record['last_error']}"
        cells = (record["enqueued_at"][:19], record["status"], record["name"], record["id"], detail)
        table.add_row(*(shown(cell) for cell in cells))
    return table


def _oldest(event: dict[str, Any] | None) -> str:
    if event is None:
        return "none"
    age = duration(event["age_seconds"])
    return f"{event['enqueued_at']} ({age} ago) {event['name']} {event['id']}"


def _attempt(attempt: dict[str, Any] | None) -> str:
    if attempt is None:
        return "none"
    outcome = f"{attempt.get('at')} {attempt.get('outcome')}, {attempt.get('events')} events"
    if attempt.get("status") is not None:
        outcome += f" (HTTP {attempt['status']})"
    return f"{outcome}: {attempt['error']}" if attempt.get("error") else outcome


def _unreported(unreported: dict[str, int]) -> str:
    if not unreported:
        return ""
    return " (not yet reported: " + ", ".join(f"{n} {r}" for r, n in unreported.items()) + ")"


def size(n: float) -> str:
    """A byte count for people: 812 B, 1.4 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def duration(seconds: float) -> str:
    """A duration for people: 45s, 12m, 3h 5m, 3d 2h."""
    whole = int(seconds)
    if whole < 3600:
        return f"{whole}s" if whole < 60 else f"{whole // 60}m"
    big, small = (86400, 3600) if whole >= 86400 else (3600, 60)
    count, rest = divmod(whole, big)
    unit, sub_unit = ("d", "h") if big == 86400 else ("h", "m")
    return f"{count}{unit} {rest // small}{sub_unit}" if rest >= small else f"{count}{unit}"
