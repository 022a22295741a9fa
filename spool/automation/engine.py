"""The engine: events in, decisions out, the same code live and in replay.

For each event, in the order given: an event of an IP or user that a decision in force stops is
counted as stopped and goes no further (a blocked request tracks nothing). Then each playbook
watching its name checks ``where``, keys it by ``group_by`` (an event without one of the values
is not counted) and records a hit at the event's own timestamp. The key is decided on when some
window of ``within`` holding that timestamp holds ``threshold`` hits (or ``distinct`` values):
the event that crosses the threshold decides, whether it came first or an hour late.

Live, ``now`` is the wall clock: a block starts when decided and lasts ``duration`` (times
``repeat`` for each earlier decision on the key). A crossing event older than ``within`` is
decided on as ``late``: reported and notified, never blocked. In replay, ``now`` is each
event's timestamp. An IP in the critical ranges is never blocked (``critical``); ``dry_run``
decides and reports but issues nothing.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import MAX_SECONDS
from ..wire import iso, parse_time
from . import state
from .conditions import MISSING, Dimension, client_ip, user
from .playbooks import Playbook, Playbooks

# The most hits kept per playbook (the oldest are evicted past it, and counted), and how long
# hits are kept past a window: events delivered up to this late still combine across batches.
MAX_HITS = 200_000
LATE_HORIZON = 3600.0
# Hits are expired every this many hits recorded, or this many seconds of event time.
EXPIRE_EVERY = 10_000
EXPIRE_SECONDS = 5.0
# A decision names at most this many of the events that crossed its threshold.
MAX_EVENT_IDS = 100


@dataclass(frozen=True)
class Decision:
    """What a playbook decided for one key."""

    id: str
    playbook: str
    action: str
    key: Mapping[str, Any]
    status: str
    at: float  # when it was taken (live: the wall clock; replay: the crossing event's time)
    crossed_at: float  # the crossing event's own timestamp
    expires: float | None
    events: tuple[str, ...]
    parameters: Mapping[str, Any]
    stopped: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Decision:
        """A decision as :mod:`.state` keeps it."""
        return cls(
            id=row["id"],
            playbook=row["playbook"],
            action=row["action"],
            key=orjson.loads(row["key"]),
            status=row["status"],
            at=row["at"],
            crossed_at=row["crossed_at"],
            expires=row["expires"],
            events=tuple(orjson.loads(row["events"])),
            parameters=orjson.loads(row["parameters"]),
            stopped=row["stopped"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "action": self.action,
            "key": dict(self.key),
            "at": iso(self.at),
            "events": list(self.events),
            "stopped": self.stopped,
            "status": self.status,
            "expires": None if self.expires is None else iso(self.expires),
            "id": self.id,
        }


class Engine:
    """Runs a file's playbooks over events, its state on the caller's connection."""

    def __init__(self, playbooks: Playbooks) -> None:
        self.playbooks = playbooks
        self._view = _View()
        self._since_expiry = 0
        self._expired_at = -float("inf")

    def process(
        self, connection: sqlite3.Connection, events: Iterable[Mapping[str, Any]],
        now: float | None = None,
    ) -> list[Decision]:  # fmt: skip
        """Run the playbooks over ``events`` (wire events, checked); ``now`` None is a replay.
        The caller holds the transaction."""
        decisions: list[Decision] = []
        stopped: dict[str, int] = {}
        timed = [(parse_time(event["timestamp"]).timestamp(), event) for event in events]
        if not timed:
            return decisions
        clock = 0.0
        self._view = view = _View.load(connection, min(at for at, _ in timed))
        for at, event in timed:
            clock = at if now is None else now
            stopper = view.stopper(event, at) if view.stops else None
            if stopper is not None:
                stopped[stopper] = stopped.get(stopper, 0) + 1
                continue
            for playbook in self.playbooks.playbooks:
                if playbook.reset_on is not None and playbook.reset_on.matches(event):
                    self._reset(connection, playbook, event, at)
            for playbook in self.playbooks.by_event.get(str(event.get("name")), ()):
                if playbook.selects(event):
                    found = self._count(connection, playbook, event, at, clock)
                    if found is not None:
                        decisions.append(found)
        state.count_stopped(connection, stopped)
        self._expire(connection, clock)
        return decisions

    def answer(
        self, connection: sqlite3.Connection, events: Iterable[Mapping[str, Any]], now: float,
        budget: int,
    ) -> tuple[list[Decision], list[dict[str, Any]], int]:  # fmt: skip
        """Live: run the playbooks over a batch's new events, then list the actions in force
        for its answer (see :func:`live_actions`)."""
        decisions = self.process(connection, events, now)
        return (decisions, *live_actions(connection, now, budget))

    def _reset(
        self, connection: sqlite3.Connection, playbook: Playbook, event: Mapping[str, Any],
        at: float,
    ) -> None:  # fmt: skip
        key = _key(playbook.group_by, event)
        if key is not None:
            state.clear(connection, playbook.name, key, at)

    def _count(
        self, connection: sqlite3.Connection, playbook: Playbook, event: Mapping[str, Any],
        at: float, now: float,
    ) -> Decision | None:  # fmt: skip
        key = _key(playbook.group_by, event)
        value: str | None = None
        if playbook.distinct is not None:
            distinct = playbook.distinct.of(event)
            value = None if distinct is MISSING else _encode(distinct)
        if key is None or (playbook.distinct is not None and value is None):
            return None
        if self._view.quiet(playbook.name, key, at):
            return None
        state.hit(connection, playbook.name, key, at, event["id"], value)
        self._since_expiry += 1
        hits = state.hits_around(
            connection, playbook.name, key, at, playbook.within, playbook.threshold
        )
        crossing = _crossing(hits, at, playbook)
        if crossing is None:
            return None
        state.clear(connection, playbook.name, key, None)
        return self._decide(connection, playbook, key, event, at, now, crossing)

    def _decide(
        self, connection: sqlite3.Connection, playbook: Playbook, key: str,
        event: Mapping[str, Any], crossed_at: float, now: float, events: list[str],
    ) -> Decision:  # fmt: skip
        ip = client_ip(event)
        status, parameters = _status(self.playbooks, playbook, event, crossed_at, now)
        expires: float | None = None
        quiet_until: float | None = now + playbook.within
        if status in state.STOPPING:
            count = state.repeated(connection, playbook.name, key)
            if playbook.duration is not None:
                lasts = min(MAX_SECONDS, playbook.duration * playbook.repeat ** (count - 1))
                expires = now + lasts
            quiet_until = expires
        elif status == state.LATE:
            quiet_until = now  # too late to matter: the key starts counting afresh
        decision = Decision(
            id=f"pb-{uuid.uuid4().hex[:16]}",
            playbook=playbook.name,
            action=playbook.action,
            key=orjson.loads(key),
            status=status,
            at=now,
            crossed_at=crossed_at,
            expires=expires,
            events=tuple(events[-MAX_EVENT_IDS:]),
            parameters=parameters,
        )
        blocks_ip = playbook.action in ("block_ip", "redirect_ip")
        who = user(event)
        row = {
            "id": decision.id,
            "playbook": playbook.name,
            "action": playbook.action,
            "key": key,
            "status": status,
            "at": now,
            "crossed_at": crossed_at,
            "expires": expires,
            "quiet_until": quiet_until,
            "events": orjson.dumps(decision.events).decode(),
            "parameters": orjson.dumps(parameters).decode(),
            "ip": ip if blocks_ip and ip is not MISSING else None,
            "user": _encode(who) if playbook.action.endswith("_user") else None,
        }
        state.decide(connection, row)
        self._view.add(row)
        state.add(connection, f"decided.{status}", 1)
        return decision

    def _expire(self, connection: sqlite3.Connection, clock: float) -> None:
        if self._since_expiry < EXPIRE_EVERY and clock - self._expired_at < EXPIRE_SECONDS:
            return
        self._since_expiry, self._expired_at = 0, clock
        horizons = [(p.name, clock - p.within - LATE_HORIZON) for p in self.playbooks.playbooks]
        state.expire(connection, horizons, MAX_HITS)


@dataclass
class _View:
    """The decisions in force over one call's events: read once (the caller's transaction keeps
    other workers out meanwhile) and kept up to date as the call decides."""

    by_ip: dict[str, list[tuple[str, float, float | None]]] = field(default_factory=dict)
    by_user: dict[str, list[tuple[str, float, float | None]]] = field(default_factory=dict)
    quiet_until: dict[tuple[str, str], float | None] = field(default_factory=dict)

    @classmethod
    def load(cls, connection: sqlite3.Connection, since: float) -> _View:
        view = cls()
        for decision_id, ip, who, start, until in state.stopping(connection, since):
            view._stop(decision_id, ip, who, start, until)
        for playbook, key, until in state.quiet(connection, since):
            view._quiet(playbook, key, until)
        return view

    @property
    def stops(self) -> bool:
        return bool(self.by_ip or self.by_user)

    def add(self, row: Mapping[str, Any]) -> None:
        """A decision just taken."""
        if row["status"] in state.STOPPING:
            self._stop(row["id"], row["ip"], row["user"], row["at"], row["expires"])
        self._quiet(row["playbook"], row["key"], row["quiet_until"])

    def stopper(self, event: Mapping[str, Any], at: float) -> str | None:
        """The decision that stops this event, if any."""
        ip, who = client_ip(event), user(event)
        for found in (
            () if ip is MISSING else self.by_ip.get(ip, ()),
            () if who is MISSING else self.by_user.get(_encode(who), ()),
        ):
            for decision_id, start, until in found:
                if start <= at and (until is None or at < until):
                    return decision_id
        return None

    def quiet(self, playbook: str, key: str, at: float) -> bool:
        if (playbook, key) not in self.quiet_until:
            return False
        until = self.quiet_until[(playbook, key)]
        return until is None or until > at

    def _stop(
        self, decision_id: str, ip: str | None, who: str | None, start: float, until: float | None
    ) -> None:
        if ip is not None:
            self.by_ip.setdefault(ip, []).append((decision_id, start, until))
        if who is not None:
            self.by_user.setdefault(who, []).append((decision_id, start, until))

    def _quiet(self, playbook: str, key: str, until: float | None) -> None:
        known = self.quiet_until.get((playbook, key), 0.0)
        if known is not None and (until is None or until > known):
            self.quiet_until[(playbook, key)] = until


def _status(
    playbooks: Playbooks, playbook: Playbook, event: Mapping[str, Any], crossed_at: float,
    now: float,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """What becomes of a decision, and the parameters of its action."""
    parameters: dict[str, Any] = {}
    if playbook.action in ("block_ip", "redirect_ip"):
        parameters["ip_cidr"] = [client_ip(event)]
    elif playbook.action in ("block_user", "redirect_user"):
        parameters["users"] = [event["user_identifiers"]]
    if playbook.url is not None:
        parameters["url"] = playbook.url
    if not playbook.blocks:
        return state.NOTIFIED, parameters
    if "ip_cidr" in parameters and playbooks.critical_ip(parameters["ip_cidr"][0]):
        return state.CRITICAL, parameters
    if now - crossed_at > playbook.within:
        return state.LATE, parameters
    return (state.DRY_RUN if playbook.dry_run else state.ISSUED), parameters


def _crossing(
    hits: list[tuple[float, str, str | None]], at: float, playbook: Playbook
) -> list[str] | None:
    """The ids of a window of ``within`` holding ``at`` that reaches the threshold, or None."""
    if len(hits) < playbook.threshold:
        return None
    within, distinct = playbook.within, playbook.distinct is not None
    # The window [hits[start].at, + within) ends before hits[end]; its values, counted.
    end, values = 0, dict[str | None, int]()
    for start, (first, _, _) in enumerate(hits):
        if first > at:
            break
        while end < len(hits) and hits[end][0] - first < within:
            value = hits[end][2] if distinct else hits[end][1]
            values[value] = values.get(value, 0) + 1
            end += 1
        if first > at - within and len(values) >= playbook.threshold:  # and at < first + within
            return [event_id for _, event_id, _ in hits[start:end]]
        leaving = hits[start][2] if distinct else hits[start][1]
        values[leaving] -= 1
        if not values[leaving]:
            del values[leaving]
    return None


def _key(group_by: tuple[Dimension, ...], event: Mapping[str, Any]) -> str | None:
    """The key of an event (its values of ``group_by``, as canonical JSON), or None when it
    lacks one of them."""
    found: dict[str, Any] = {}
    for dimension in group_by:
        value = dimension.of(event)
        if value is MISSING or isinstance(value, dict | list):
            return None
        found[dimension.path] = dict(value) if dimension.path == "user" else value
    return orjson.dumps(found, option=orjson.OPT_SORT_KEYS).decode()


def _encode(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def live_actions(
    connection: sqlite3.Connection, now: float, budget: int
) -> tuple[list[dict[str, Any]], int]:
    """The issued actions in force, in the agent's format, blocks before redirects and the most
    recent first, as many as fit in ``budget`` bytes of JSON; and how many did not fit."""
    found = state.live(connection, now)
    ordered = sorted(found, key=lambda row: not str(row[1]).startswith("block_"))  # stable
    actions: list[dict[str, Any]] = []
    used = 2
    for index, (action_id, action, parameters, expires, _at) in enumerate(ordered):
        item = {
            "action_id": action_id,
            "action": action,
            "parameters": orjson.loads(parameters),
            "duration": None if expires is None else max(0.0, expires - now),
        }
        used += len(orjson.dumps(item)) + 1
        if used > budget:
            return actions, len(ordered) - index
        actions.append(item)
    return actions, 0
