"""What each view of the Event Explorer shows, as one SQL query (or a few) over an event store.

A view is selected by a :class:`Selection`: a time range, a bucket, an event name to focus on and
filters (dimension = value). Dimensions are the playbooks' (:mod:`sqreen.automation.conditions`):
``name``, ``ip`` and ``user`` are columns of the store; ``user.<key>``, ``properties.<path>`` and
``request.<field>`` are read from the stored event with ``json_extract``, the path a bound
parameter like every value.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..automation import state
from ..automation.conditions import Invalid, dimension

MAX_BUCKETS = 400
TOP_NAMES = 12
TOP_VALUES = 20
PAGE = 50
# Dimensions offered from what the events carry: properties seen in this many recent events.
SAMPLE = 2000
_COLUMNS = {"name": "name", "ip": "ip", "user": "user"}


class BadView(ValueError):
    """A view asked with a parameter that cannot be used; the message says why."""


@dataclass(frozen=True)
class Selection:
    """Which events a view looks at."""

    start: float
    end: float
    bucket: float
    name: str | None = None
    filters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise BadView("the time range must end after it starts")
        if self.bucket <= 0 or (self.end - self.start) / self.bucket > MAX_BUCKETS:
            raise BadView(f"a bucket must be positive and give at most {MAX_BUCKETS} of them")
        for path, _ in self.filters:
            expression(path)

    @property
    def buckets(self) -> list[float]:
        count = int((self.end - self.start) // self.bucket) + 1
        return [self.start + i * self.bucket for i in range(count)]

    def where(self, with_name: bool = True) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        clauses, parameters = ["at >= ?", "at < ?"], list[Any]([self.start, self.end])
        if with_name and self.name is not None:
            clauses.append("name = ?")
            parameters.append(self.name)
        for path, value in self.filters:
            sql, bound = expression(path)
            clauses.append(f"CAST({sql} AS TEXT) = ?")
            parameters += [*bound, value]
        return " AND ".join(clauses), parameters


def expression(path: str) -> tuple[str, list[Any]]:
    """The SQL reading a dimension from a stored event, and its parameters; BadView for a
    dimension the playbooks would not take."""
    try:
        dimension(path)
    except Invalid as exc:
        raise BadView(str(exc)) from None
    if path in _COLUMNS:
        return _COLUMNS[path], []
    head, _, rest = path.partition(".")
    if '"' in rest or "\\" in rest:
        raise BadView(f"{path!r}: a key with a quote or a backslash cannot be selected")
    if head == "user":
        return "json_extract(payload, ?)", [f'$.user_identifiers."{rest}"']
    keys = ".".join(f'"{key}"' for key in rest.split("."))
    return "json_extract(payload, ?)", [f"$.{head}.{keys}"]


def trend(connection: sqlite3.Connection, selection: Selection) -> dict[str, Any]:
    """Events per bucket for the busiest names (or the focused one)."""
    where, parameters = selection.where()
    rows = connection.execute(
        f"SELECT name, CAST((at - ?) / ? AS INTEGER), count(*) FROM events WHERE {where} "
        "GROUP BY 1, 2",
        [selection.start, selection.bucket, *parameters],
    ).fetchall()
    totals: dict[str, int] = {}
    for name, _, n in rows:
        totals[name] = totals.get(name, 0) + n
    names = sorted(totals, key=lambda n: (-totals[n], n))[:TOP_NAMES]
    width = len(selection.buckets)
    series = {name: [0] * width for name in names}
    for name, index, n in rows:
        if name in series and 0 <= index < width:
            series[name][index] = n
    return {"buckets": selection.buckets, "series": series, "totals": totals}


def breakdown(connection: sqlite3.Connection, selection: Selection, path: str) -> dict[str, Any]:
    """The top values of a dimension among the selected events, each with its count and its
    own trend."""
    sql, bound = expression(path)
    where, parameters = selection.where()
    top = connection.execute(
        f"SELECT CAST({sql} AS TEXT) AS value, count(*) FROM events WHERE {where} "
        "GROUP BY value ORDER BY 2 DESC, 1 LIMIT ?",
        [*bound, *parameters, TOP_VALUES],
    ).fetchall()
    values = [value for value, _ in top if value is not None]
    width = len(selection.buckets)
    trends = {value: [0] * width for value in values}
    if values:
        marks = ",".join("?" * len(values))
        for value, index, n in connection.execute(
            f"SELECT CAST({sql} AS TEXT) AS value, CAST((at - ?) / ? AS INTEGER), count(*) "
            f"FROM events WHERE {where} AND value IN ({marks}) GROUP BY 1, 2",
            [*bound, selection.start, selection.bucket, *parameters, *values],
        ):
            if 0 <= index < width:
                trends[value][index] = n
    return {
        "dimension": path,
        "values": [{"value": v, "count": n, "trend": trends.get(v, [])} for v, n in top],
        "buckets": selection.buckets,
    }


def events(
    connection: sqlite3.Connection, selection: Selection, before: int | None = None
) -> dict[str, Any]:
    """The selected events, newest first, a page at a time (``before``: the last seq seen)."""
    where, parameters = selection.where()
    if before is not None:
        where += " AND seq < ?"
        parameters.append(before)
    rows = connection.execute(
        f"SELECT seq, id, name, at, ip, user, payload FROM events WHERE {where} "
        "ORDER BY at DESC, seq DESC LIMIT ?",
        [*parameters, PAGE + 1],
    ).fetchall()
    found = [
        {"seq": seq, "id": i, "name": n, "at": at, "ip": ip, "user": u,
         "properties": orjson.loads(p).get("properties", {})}
        for seq, i, n, at, ip, u, p in rows[:PAGE]
    ]  # fmt: skip
    total = connection.execute(f"SELECT count(*) FROM events WHERE {where}", parameters)
    return {"events": found, "more": len(rows) > PAGE, "total": total.fetchone()[0]}


def event(connection: sqlite3.Connection, event_id: str) -> dict[str, Any] | None:
    """One event in full, with the decisions whose crossing events name it."""
    row = connection.execute(
        "SELECT payload, received_at FROM events WHERE id = ?", (event_id,)
    ).fetchone()
    if row is None:
        return None
    found = connection.execute(
        "SELECT d.id, d.playbook, d.action, d.status, d.at FROM pb_decisions d, "
        "json_each(d.events) e WHERE e.value = ?",
        (event_id,),
    ).fetchall()
    return {
        "event": orjson.loads(row[0]),
        "received_at": row[1],
        "decisions": [
            dict(zip(("id", "playbook", "action", "status", "at"), d, strict=True)) for d in found
        ],
    }


def decisions(connection: sqlite3.Connection, now: float, live_only: bool) -> list[dict[str, Any]]:
    """The decisions (those in force, or all), the most recent first."""
    rows = state.decisions(connection)
    found = []
    for row in reversed(rows):
        live = row["expires"] is None or row["expires"] > now
        if live_only and not (row["status"] == state.ISSUED and live):
            continue
        found.append(
            {
                **{k: row[k] for k in ("id", "playbook", "action", "status", "at", "expires")},
                "key": orjson.loads(row["key"]),
                "events": orjson.loads(row["events"]),
                "stopped": row["stopped"],
                "live": live and row["status"] == state.ISSUED,
            }
        )
    return found


def remove_decision(connection: sqlite3.Connection, decision_id: str, now: float) -> bool:
    """End a decision now (its block is lifted at the next answer); in the caller's
    transaction. False when there is no such decision in force."""
    return bool(
        connection.execute(
            "UPDATE pb_decisions SET expires = ?, quiet_until = ? WHERE id = ? "
            "AND (expires IS NULL OR expires > ?)",
            (now, now, decision_id, now),
        ).rowcount
    )


def dimensions(connection: sqlite3.Connection) -> list[str]:
    """The dimensions to offer: the fixed ones, then what the recent events carry."""
    found = ["name", "ip", "user", "request.path", "request.endpoint", "request.user_agent",
             "request.verb", "request.host"]  # fmt: skip
    rows = connection.execute(_DIMENSIONS, (SAMPLE,)).fetchall()
    # json_tree names a plain key $.properties.a.b and quotes any other: those are left out.
    seen = {path.removeprefix("$.") for (path,) in rows if '"' not in path and "[" not in path}
    return found + sorted(p.replace("user_identifiers.", "user.", 1) for p in seen)


_DIMENSIONS = """
SELECT DISTINCT t.fullkey FROM (SELECT payload FROM events ORDER BY seq DESC LIMIT ?) e,
  json_tree(e.payload) t
WHERE t.type NOT IN ('object', 'array')
  AND (t.fullkey LIKE '$.properties.%' OR t.fullkey LIKE '$.user_identifiers.%')
"""


@dataclass
class Replayed:
    """A draft playbook over the stored history: its decisions and where they fall."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    per_bucket: list[int] = field(default_factory=list)
    keys: int = 0
    stopped: int = 0


def replayed(found: Sequence[Any], selection: Selection) -> Replayed:
    """A replay's decisions, placed on the selection's buckets."""
    result = Replayed(per_bucket=[0] * len(selection.buckets))
    keys = set()
    for decision in found:
        index = int((decision.at - selection.start) // selection.bucket)
        if 0 <= index < len(result.per_bucket):
            result.per_bucket[index] += 1
        keys.add((decision.playbook, orjson.dumps(decision.key).decode()))
        result.stopped += decision.stopped
        result.decisions.append(decision.to_json())
    result.keys = len(keys)
    return result
