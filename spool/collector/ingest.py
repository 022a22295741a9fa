"""Taking a batch's accepted events in: one transaction keeps the new ones (by id), runs the
playbooks over them, queues their notifications and reads the actions in force; the caller
answers once it is committed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import clock
from ..automation.engine import Decision, Engine
from ..automation.playbooks import Playbooks
from ..storage.files import file_bytes
from .notify import Notifier, enqueue
from .store import EventStore

FULL = 0.9


@dataclass
class Taken:
    """What one batch did: its new events, the decisions they caused, and the actions in force
    (those that fit the answer's budget; ``omitted`` did not)."""

    new: list[Mapping[str, Any]]
    decisions: list[Decision] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    omitted: int = 0


class Ingest:
    """A store, and the playbooks run over what it takes in (none: it only keeps events)."""

    def __init__(self, store: EventStore, playbooks: Playbooks | None = None) -> None:
        self.store = store
        self.playbooks = playbooks
        self._engine = None if playbooks is None else Engine(playbooks)
        self.notifier = Notifier(store)  # also keeps the store within its bounds
        self.notifier.start()

    @property
    def urgent(self) -> list[str]:
        """The event names the playbooks watch: applications deliver those early."""
        return [] if self.playbooks is None else self.playbooks.watched

    def take(self, events: Sequence[Mapping[str, Any]], budget: int) -> Taken:
        """Keep, decide, answer; ``budget`` bytes for the actions' JSON."""
        now = clock.now()
        queued = 0
        with self.store.transaction() as connection:
            taken = Taken(self.store.add(connection, events, now))
            if self._engine is not None:
                engine = self._engine
                taken.decisions, taken.actions, taken.omitted = engine.answer(
                    connection, taken.new, now, budget
                )
                by_name = {p.name: p.notify for p in engine.playbooks.playbooks}
                queued = enqueue(
                    connection, [(d, by_name[d.playbook]) for d in taken.decisions], now
                )
        # Two stats: past most of its bound, the store is pruned now, not at the next round.
        full = file_bytes(self.store.path) > self.store.max_bytes * FULL
        if queued or full:
            self.notifier.wake(prune=full)
        return taken

    def close(self) -> None:
        self.notifier.stop()
        self.store.close()
