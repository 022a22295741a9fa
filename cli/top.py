"""``sqreen-spool top``: a live view of a spool, refreshed every second; ``q`` quits.

Read-only, through the same report as ``inspect``: pending events and their trend, the rates at
which events are tracked and delivered (from the changes between two looks), the delivery lag
(the oldest pending event's age), drops and failures, and what each process says it is doing.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sqreen.ops.report import Summary, summarize
from sqreen.storage.files import file_bytes

from .common import Context, shown
from .show import process_line, size

TREND = 60  # looks kept for the pending trend


def top(
    ctx: typer.Context,
    every: Annotated[float, typer.Option(min=0.2, help="Seconds between looks.")] = 1.0,
) -> None:
    """A live view of the spool (q quits): pending and its trend, rates, lag, drops,
    processes."""
    context: Context = ctx.obj
    settings = context.settings()
    history: deque[tuple[float, Summary]] = deque(maxlen=TREND)
    with _keys() as pressed, Live(
        Text("reading the spool..."), auto_refresh=False, screen=False
    ) as live:  # fmt: skip
        while True:
            # A reader per look: one opened while no process had the spool open reads it as
            # immutable, and would never see what is written after.
            with context.reader(settings) as engine:
                found = summarize(engine, settings.path, file_bytes(settings.path), None, False)
            history.append((time.monotonic(), found))
            live.update(_view(history, settings.max_bytes), refresh=True)
            if pressed(every) in ("q", "Q"):
                return


def _view(history: deque[tuple[float, Summary]], bound: int) -> Group:
    now, found = history[-1]
    then, before = history[0]
    span = max(1e-9, now - then)
    delivered = (found.delivered_total - before.delivered_total) / span
    # Every event tracked is pending, rejected, delivered or dropped by now.
    entered = [f.counts["pending"] + f.counts["rejected"] + f.delivered_total
               + sum(f.dropped.values()) for f in (before, found)]  # fmt: skip
    tracked = max(0.0, (entered[1] - entered[0]) / span)
    oldest = found.oldest_pending
    table = Table.grid(padding=(0, 2))
    rows = {
        "spool": f"{found.path} ({size(found.file_bytes)} of {size(bound)})",
        "pending": f"{found.counts['pending']} ({found.counts['leased']} being sent)   "
        + _trend([f.counts["pending"] for _, f in history]),
        "rates": f"{tracked:,.1f} tracked/s, {delivered:,.1f} delivered/s",
        "lag": "none pending" if oldest is None else f"{oldest['age_seconds']:.1f} s",
        "rejected": str(found.counts["rejected"]),
        "dropped": ", ".join(f"{n} {reason}" for reason, n in found.dropped.items()),
        "failures": ", ".join(f"{n} {k}" for k, n in found.failures.items()) or "none",
    }
    for key, value in rows.items():
        table.add_row(key, shown(value))
    for number, process in enumerate(found.processes):
        table.add_row("processes" if not number else "", shown(process_line(process)))
    return Group(table, Text("q quits", style="dim"))


def _trend(values: list[int]) -> str:
    """The pending count's last looks, as a row of bars (highest: the most seen)."""
    bars = "▁▂▃▄▅▆▇█"
    top_value = max(values) or 1
    return "".join(bars[min(7, v * 8 // (top_value + 1))] for v in values[-30:])


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """A function waiting up to N seconds for a key (None when none came); the terminal in
    cbreak mode meanwhile, when stdin is one."""
    if not sys.stdin.isatty():

        def wait(timeout: float) -> None:
            time.sleep(timeout)

        yield wait
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:

        def pressed(timeout: float) -> str | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 1).decode(errors="replace") if ready else None

        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
