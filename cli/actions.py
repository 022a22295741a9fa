"""``sqreen-spool actions``: the security responses every process on the spool enforces.

The listing shows both sources: the collector's list (replaced by each of its answers that
carries one) and an operator's actions, added here, which a collector reload never erases.
Values typed here are strings: ``user_id=42`` matches a user identified with the int ``42``.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from sqreen.config import parse_duration
from sqreen.security.action_store import (
    OPERATOR,
    add_operator_action,
    clear_actions,
    load_actions,
    remove_action,
)
from sqreen.security.actions import Malformed, check_scope, read_action
from sqreen.storage.sql import driver
from sqreen.storage.store import Store

from .common import USAGE, Context, fail, shown
from .show import out

app = typer.Typer(
    help="List, add and remove security responses (block or redirect).", rich_markup_mode=None
)

Duration = Annotated[
    str | None,
    typer.Option(
        "--duration", help="Expire after this long (90, 30s, 10m, 1h, 2d); default never."
    ),
]
Url = Annotated[str, typer.Option("--url", help="Where to redirect (an absolute http(s) URL).")]
Users = Annotated[list[str], typer.Argument(help="The user's identifiers, as key=value.")]
Networks = Annotated[list[str], typer.Argument(help="Addresses or CIDR ranges (v4 or v6).")]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Allow a range wider than SQREEN_SPOOL_WIDEST_BLOCK (/8, /32), or one covering "
        "loopback.",
    ),
]


@app.callback(invoke_without_command=True)
def listing(
    ctx: typer.Context,
    json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """List the live actions (both sources)."""
    if ctx.invoked_subcommand is not None:
        return
    context: Context = ctx.obj
    with context.reader(context.existing()) as engine, engine.connect() as conn:
        try:
            found = [a for a in load_actions(driver(conn)) if a.live(time.time())]
        except sqlite3.OperationalError:  # a spool from before actions existed
            found = []
    if json:
        typer.echo(orjson.dumps([a.to_json() for a in found]).decode())
        return
    if not found:
        typer.echo("no security responses")
        return
    table = Table("action_id", "action", "source", "applies to", "url", "expires")
    for action in found:
        targets = action.ip_cidr or tuple(
            " ".join(f"{k}={v}" for k, v in user.items()) for user in action.users
        )
        table.add_row(
            *map(
                shown,
                (
                    action.action_id,
                    action.action,
                    action.source,
                    ", ".join(targets),
                    action.url or "",
                    _when(action.expires_at),
                ),
            )
        )
    out.print(table)


@app.command("block-user")
def block_user(ctx: typer.Context, users: Users, duration: Duration = None) -> None:
    """Block a user: ``block-user email=a@b.c user_id=42``."""
    _add(ctx, "block_user", {"users": [_identifiers(users)]}, duration)


@app.command("redirect-user")
def redirect_user(ctx: typer.Context, users: Users, url: Url, duration: Duration = None) -> None:
    """Redirect a user's requests: ``redirect-user user_id=42 --url https://...``."""
    _add(ctx, "redirect_user", {"users": [_identifiers(users)], "url": url}, duration)


@app.command("block-ip")
def block_ip(
    ctx: typer.Context, networks: Networks, duration: Duration = None, force: Force = False
) -> None:
    """Block addresses or ranges: ``block-ip 203.0.113.0/24 2001:db8::/32``."""
    _add(ctx, "block_ip", {"ip_cidr": networks}, duration, force)


@app.command("redirect-ip")
def redirect_ip(
    ctx: typer.Context,
    networks: Networks,
    url: Url,
    duration: Duration = None,
    force: Force = False,
) -> None:
    """Redirect requests from addresses or ranges to ``--url``."""
    _add(ctx, "redirect_ip", {"ip_cidr": networks, "url": url}, duration, force)


@app.command()
def remove(ctx: typer.Context, action_id: str) -> None:
    """Remove one action (a collector's comes back with its next answer that lists it)."""
    removed = _write(ctx, lambda store: remove_action(store, action_id))
    if not removed:
        fail(f"no action {action_id!r}")
    typer.echo(f"removed {action_id}")


@app.command()
def clear(ctx: typer.Context) -> None:
    """Remove every action, the collector's included (until its next answer)."""
    removed = _write(ctx, clear_actions)
    typer.echo(f"removed {removed} actions")


def _add(
    ctx: typer.Context,
    name: str,
    parameters: dict[str, Any],
    duration: str | None,
    force: bool = False,
) -> None:
    try:
        seconds = None if duration is None else parse_duration(duration)
    except ValueError as exc:
        fail(str(exc), USAGE)
    document = {
        "action": name,
        "action_id": f"op-{uuid.uuid4().hex[:12]}",
        "parameters": parameters,
        "duration": seconds,
    }
    now = time.time()
    try:
        action = read_action(document, now, OPERATOR)
        if not force:
            check_scope(action, ctx.obj.settings().widest_block)
    except Malformed as exc:
        fail(str(exc).removeprefix(f"{document['action_id']}: "), USAGE)
    _write(ctx, lambda store: add_operator_action(store, action, now))
    typer.echo(f"added {action.action_id} ({name}, expires {_when(action.expires_at)})")


def _write(ctx: typer.Context, change: Any) -> Any:
    context: Context = ctx.obj
    settings = context.settings()
    with context.errors(settings.path), Store(settings) as store:
        return change(store)


def _identifiers(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            fail(f"{pair!r}: identifiers are key=value (email=a@b.c user_id=42)", USAGE)
        found[key] = value
    return found


def _when(expires_at: float | None) -> str:
    if expires_at is None:
        return "never"
    return datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds")
