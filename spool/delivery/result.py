"""What one flush did: a small value every caller of a flush sees (``sqreen.flush()``, the CLI),
kept apart from the flusher so that importing it costs nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlushResult:
    """What one flush did: events delivered, rejected, failed (still pending), left pending."""

    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    pending: int = 0
    timed_out: bool = False

    def __add__(self, other: FlushResult) -> FlushResult:
        return FlushResult(
            self.delivered + other.delivered,
            self.rejected + other.rejected,
            self.failed + other.failed,
            other.pending,
            self.timed_out or other.timed_out,
        )
