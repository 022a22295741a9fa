"""Which events an operator means: by status, name, delivery id and time in the spool.

One definition of the filter for listing, requeueing and purging, so that ``inspect events``
shows exactly the rows a ``purge`` with the same options would delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .. import clock
from ..config import parse_duration
from ..storage.schema import STATUSES
from ..wire import OutOfRange, parse_time

ALL = "all"


@dataclass(frozen=True)
class Selection:
    """Events with one of ``statuses``, and when given, this ``name``, one of these ``ids``,
    entered into the spool at or after ``since`` (Unix seconds)."""

    statuses: tuple[int, ...]
    name: str | None = None
    ids: tuple[str, ...] = ()
    since: float | None = None

    @classmethod
    def of(
        cls,
        status: str,
        name: str | None = None,
        ids: Sequence[str] = (),
        since: float | None = None,
    ) -> Selection:
        """Build from a status name (``pending``, ``delivered``, ``rejected`` or ``all``)."""
        if status == ALL:
            return cls(tuple(STATUSES.values()), name, tuple(ids), since)
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {status_choices()}")
        return cls((STATUSES[status],), name, tuple(ids), since)

    def where(self) -> tuple[str, dict[str, Any]]:
        """A SQL condition on the ``events`` table and its bound parameters."""
        clauses = ["status IN (SELECT value FROM json_each(:statuses))"]
        params: dict[str, Any] = {"statuses": orjson.dumps(self.statuses).decode()}
        if self.name is not None:
            clauses.append("name = :name")
            params["name"] = self.name
        if self.ids:
            # A row holds a UUID's 16 bytes (or the text, from a release before 0007_packed).
            clauses.append(
                "(id IN (SELECT value FROM json_each(:ids)) OR "
                "hex(id) IN (SELECT upper(replace(value, '-', '')) FROM json_each(:ids)))"
            )
            params["ids"] = orjson.dumps(self.ids).decode()
        if self.since is not None:
            clauses.append("enqueued_at >= :since")
            params["since"] = self.since
        return " AND ".join(clauses), params


def status_choices() -> str:
    return ", ".join([*STATUSES, ALL])


def parse_since(value: str, now: float | None = None) -> float:
    """Unix seconds from an ISO-8601 time (naive means UTC) or a duration ago (``90``, ``90s``,
    ``15m``, ``2h``, ``3d``, ``1w``: the settings' parser)."""
    try:
        return parse_time(value).timestamp()
    except OutOfRange:
        raise
    except ValueError:
        pass
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO-8601 time nor a duration such as 90s, 15m, 2h, 3d, 1w"
        ) from None
    return (clock.now() if now is None else now) - seconds
