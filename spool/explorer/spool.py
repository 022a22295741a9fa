"""The spool side of the explorer: what ``sqreen-spool inspect`` shows, for the page.

Read-only, through the same report as ``inspect`` (:mod:`sqreen.ops.report`): it never creates,
migrates, checkpoints or moves the spool aside.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ..ops import report
from ..ops.selection import Selection
from ..storage.files import file_bytes, read_only_engine

SHOWN = 50  # events of each state


class SpoolSide:
    """One spool, read for the page."""

    def __init__(self, path: Path, lock_timeout: float = 5.0) -> None:
        self.path, self._lock_timeout = path, lock_timeout

    def report(self) -> dict[str, Any]:
        """Counts, drops by reason, failures by kind, and the first pending and rejected events
        with their errors and next attempt."""
        engine = read_only_engine(self.path, self._lock_timeout)
        try:
            summary = report.summarize(engine, self.path, file_bytes(self.path), None, False)
            found = summary.as_dict()
            for status in ("pending", "rejected"):
                selected = report.events(engine, Selection.of(status), limit=SHOWN)
                found[status] = list(itertools.islice(selected, SHOWN))
            return found
        finally:
            engine.dispose()
