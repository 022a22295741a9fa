"""The requests each security response stops, tallied per action and client, so that a blocked
client's flood records one ``sq.action.*`` event a minute at most, not one per request.

A blocked client that sends 20,000 requests would otherwise write 20,000 events, and under a
size bound with the collector down, evict the application's own. The first request stopped in a
window is recorded at once (the block shows right away), carrying how many the previous window
stopped after its first; the rest only add to the count. What a window stopped after its first
request and that no later request reported is recorded when the window is over, by the
maintenance thread, or at close.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..forks import at_fork
from .actions import Action

# One event per action and client per this many seconds at most.
WINDOW = 60.0
# Clients tallied at once; past it, new clients of an action share one tally (client "*").
MAX_CLIENTS = 10_000
OVERFLOW = "*"


@dataclass
class _Count:
    started: float
    unreported: int
    action: Action
    output: dict[str, Any]


class Tally:
    """Thread-safe counts of stopped requests, keyed by action and client."""

    def __init__(self, window: float = WINDOW, max_clients: int = MAX_CLIENTS) -> None:
        self._window, self._max = window, max_clients
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()
        at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        """Forget every count (in a child after ``fork()``: they are the parent's to report)."""
        self._lock = threading.Lock()
        self._counts = {}

    def stopped(
        self, action: Action, client: str, output: dict[str, Any], now: float
    ) -> int | None:
        """Count one stopped request; return how many requests its event should report now
        (this one and those left unreported), or None when this one is only counted."""
        with self._lock:
            key = (action.action_id, client)
            count = self._counts.get(key)
            if count is None and len(self._counts) >= self._max:
                key = (action.action_id, OVERFLOW)
                count = self._counts.get(key)
                output = {"clients": OVERFLOW}
            if count is None or now - count.started >= self._window:
                before = 0 if count is None else count.unreported
                self._counts[key] = _Count(now, 0, action, output)
                return before + 1
            count.unreported += 1
            return None

    def due(
        self, now: float, everything: bool = False
    ) -> Iterator[tuple[Action, dict[str, Any], int]]:
        """The counts of windows that are over (all of them with ``everything``), forgotten
        as they are handed out: ``(action, output, requests)``, for an event each."""
        with self._lock:
            ended = [
                key
                for key, count in self._counts.items()
                if everything or now - count.started >= self._window
            ]
            found = [self._counts.pop(key) for key in ended]
        for count in found:
            if count.unreported:
                yield count.action, count.output, count.unreported
