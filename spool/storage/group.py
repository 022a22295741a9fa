"""Group commit: concurrent ``track()`` calls of one process share one transaction.

While one commit is in flight, the calls that arrive queue their already-encoded events; when
it is done, the first of them leads the next commit, which takes all of them. Each call
returns only once a commit that holds its own event is done (or has failed: then every call in
it fails alike, and none reports success). Used where a commit costs far more than a hand-off
between threads: ``power`` durability, where each commit waits for the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..event import Event
from .failures import GateTimeout


class _Slot:
    """One queued call: its event, then its outcome."""

    __slots__ = ("done", "error", "event", "lead")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.done: threading.Event | None = None  # made for a call that waits (a follower)
        self.lead = False  # woken to lead the next commit, not with an outcome
        self.error: BaseException | None = None


# Called by the leader with ``take``, which returns the events queued at that moment (a commit
# takes them once it holds the writer, so that the calls arriving meanwhile join this one), and
# whether the last commit was shared (others are likely about to queue: worth a moment).
Commit = Callable[[Callable[[], Sequence[Event]], bool], None]


class Group:
    """The queue of one store's writers in this process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A fresh queue (in a child after ``fork()``: the parent's callers are not here)."""
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._leading = False
        self._shared = False  # the last commit held more than one call

    def insert(self, event: Event, commit: Commit, timeout: float) -> None:
        """Commit ``event`` with the others queued now, or raise what the shared commit
        raised."""
        slot = _Slot(event)
        with self._lock:
            self._queue.append(slot)
            slot.lead = not self._leading
            self._leading = True
            if not slot.lead:
                slot.done = threading.Event()
        if slot.done is not None:
            if not slot.done.wait(timeout) and self._withdraw(slot):
                raise GateTimeout(f"a group commit of the spool took over {timeout} s")
            # A slot that a commit has taken is that commit's: its outcome is final, and
            # answering False before it is known could report a stored event as lost.
            slot.done.wait()
            if not slot.lead:  # committed (or failed) by an earlier leader
                _outcome(slot)
                return
        self._lead(commit)
        _outcome(slot)

    def _withdraw(self, slot: _Slot) -> bool:
        """Take a caller that gave up out of the queue; False when it is too late: a commit
        took its event, or it was just handed the lead (it then leads as if it had waited)."""
        with self._lock:
            if slot.lead or slot not in self._queue:
                return False
            self._queue.remove(slot)
            return True

    def _lead(self, commit: Commit) -> None:
        batch: list[_Slot] = []

        def take() -> list[Event]:
            with self._lock:
                batch[:], self._queue = self._queue, []
            self._shared = len(batch) > 1
            return [slot.event for slot in batch]

        try:
            commit(take, self._shared)
        except BaseException as exc:
            if not batch:  # failed before taking its batch (the writer's lock timed out)
                take()
            for slot in batch:
                slot.error = exc
        finally:
            with self._lock:
                # Arrived during the commit: the first of them leads next. A caller that gave
                # up has left the queue (_withdraw), so the one handed the lead is waiting.
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    assert successor.done is not None
                    successor.done.set()
                else:
                    self._leading = False
            for slot in batch:
                slot.lead = False
                if slot.done is not None:
                    slot.done.set()


def _outcome(slot: _Slot) -> None:
    if slot.error is not None:
        raise slot.error
