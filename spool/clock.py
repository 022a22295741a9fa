"""The wall clock, read through one seam: every time the library stores or compares (when an
event entered the spool, leases, backoffs, ages, expiries) is :func:`now`. The model test moves
it forward (:func:`advance`) instead of sleeping; nothing else should."""

from __future__ import annotations

import time

_offset = 0.0


def now() -> float:
    """Unix seconds."""
    return time.time() + _offset


def advance(seconds: float) -> None:
    """Move the clock forward by ``seconds`` for the whole process (tests only)."""
    global _offset
    _offset += seconds


def reset() -> None:
    """Back to the real time (tests only)."""
    global _offset
    _offset = 0.0
