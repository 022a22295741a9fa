"""``sqreen-spool playbook``: check a playbook file, replay history through it; and the
``collect`` shorthands (``--block-after`` and friends) written as the playbooks they stand for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn

from sqreen.automation.engine import Decision
from sqreen.automation.playbooks import Playbooks, Problems, document, read
from sqreen.collector.replay import BadSource, replay
from sqreen.wire import iso

from .common import USAGE, err, fail, plain

app = typer.Typer(
    no_args_is_help=True,
    help="Check a playbook file; replay history through it.",
    rich_markup_mode=None,
)

FAILED_LOGIN = {"event": "sqreen.auth_track", "where": {"properties.success": False}}


@app.command()
def check(file: Annotated[Path, typer.Argument(help="A playbook file (TOML).")]) -> None:
    """Check a playbook file: every mistake on its own line, naming the playbook and the key
    (exit 2); else one line per playbook."""
    playbooks = checked(file)
    for playbook in playbooks.playbooks:
        groups = ", ".join(d.path for d in playbook.group_by)
        lasts = "until removed" if playbook.duration is None else f"{playbook.duration:g} s"
        mode = " (dry run)" if playbook.dry_run else ""
        typer.echo(
            plain(
                f"{playbook.name}: {playbook.action}{mode} per {groups} after "
                f"{playbook.threshold} in {playbook.within:g} s, for {lasts}"
            )
        )


@app.command("replay")
def replay_command(
    file: Annotated[Path, typer.Argument(help="A playbook file (TOML).")],
    events: Annotated[
        Path, typer.Option(help="An event store (collect --store) or JSON lines of wire events.")
    ],
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Run the playbooks over recorded events, in timestamp order, as the collector would have,
    and print each decision: when, which key, the events that crossed the threshold, and how
    many later events of that key its block would have stopped."""
    playbooks = checked(file)
    with Progress(
        TextColumn("replaying"), BarColumn(), TextColumn("{task.completed} events"),
        console=err, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("replay", total=None)
        try:
            decisions = replay(playbooks, events, lambda n: progress.update(task, completed=n))
        except BadSource as exc:
            fail(str(exc), USAGE)
    for decision in decisions:
        typer.echo(orjson.dumps(_shown(decision)).decode() if json else _line(decision))
    if not json:
        err.print(f"{len(decisions)} decisions", markup=False)


def _shown(decision: Decision) -> dict[str, object]:
    found = decision.to_json()
    return {k: found[k] for k in ("playbook", "action", "key", "at", "events", "stopped", "status")}


def _line(decision: Decision) -> str:
    key = " ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in decision.key.items())
    status = "" if decision.status == "issued" else f" [{decision.status}]"
    return plain(
        f"{iso(decision.at)}  {decision.playbook}  {decision.action}{status}  {key}  "
        f"crossed by {len(decision.events)} events, would have stopped {decision.stopped}"
    )


def checked(file: Path) -> Playbooks:
    """A playbook file's playbooks; exit 2 with every mistake on its own line."""
    return read_or_exit(decoded(file))


def decoded(file: Path) -> dict[str, Any]:
    """A playbook file decoded, not checked yet; exit 2 when it is not TOML."""
    try:
        return document(file)
    except Problems as exc:
        _exit(exc)


def read_or_exit(spec: Mapping[str, Any]) -> Playbooks:
    """The playbooks of a decoded file; exit 2 with every mistake on its own line."""
    try:
        return read(spec)
    except Problems as exc:
        _exit(exc)


def _exit(problems: Problems) -> NoReturn:
    for line in problems.lines:
        err.print(f"error: {plain(line)}", markup=False)
    raise typer.Exit(USAGE)


def shorthand(
    block_after: int | None, block_ip_after: int | None, window: str, block_for: str
) -> dict[str, Any]:
    """The playbook file ``collect --block-after N --block-ip-after M`` stands for, decoded:
    failed logins of one user (this one allows account lockout: anyone can fail the victim's
    logins), and of one client IP."""
    tables = []
    for name, threshold, group_by, action in (
        ("failed logins per user", block_after, "user", "block_user"),
        ("failed logins per IP", block_ip_after, "ip", "block_ip"),
    ):
        if threshold is not None:
            tables.append(
                FAILED_LOGIN
                | {"name": name, "group_by": group_by, "threshold": threshold}
                | {"within": window, "action": action, "duration": block_for}
            )
    return {"playbook": tables}
