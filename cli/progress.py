"""Progress for a long read (``import``): a Rich bar on a terminal, one line per 10% otherwise,
on stderr, so that stdout keeps what the command reports."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import IO

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .common import err


@contextlib.contextmanager
def reading(
    source: IO[bytes], lines: Iterator[bytes | None], quiet: bool = False
) -> Iterator[Iterator[bytes | None]]:
    """``lines`` as they are read from ``source``, with the share of it read shown (nothing
    for a stream of unknown size, or ``quiet``)."""
    total = _size(source)
    if quiet or total is None:
        yield lines
        return
    if sys.stderr.isatty():
        columns = (TextColumn("importing"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("import", total=total)
            yield _tracked(source, lines, lambda done: bar.update(task, completed=done))
        return
    shown = [0]  # tenths of the file said so far

    def line(done: int) -> None:
        tenths = min(10, done * 10 // total)
        if tenths > shown[0]:
            shown[0] = tenths
            err.print(f"imported {tenths * 10}% of the file", markup=False)

    yield _tracked(source, lines, line)


def _tracked(
    source: IO[bytes], lines: Iterator[bytes | None], update: object
) -> Iterator[bytes | None]:
    for count, line in enumerate(lines):
        if count % 1000 == 0:
            update(source.tell())  # type: ignore[operator]
        yield line
    update(_size(source) or 0)  # type: ignore[operator]


def _size(source: IO[bytes]) -> int | None:
    try:
        if not source.seekable():
            return None
        return os.fstat(source.fileno()).st_size or None
    except (OSError, ValueError):
        return None
