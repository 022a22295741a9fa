"""Caller mistakes raise InvalidEvent naming the problem, and store nothing."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import sqreen
from sqreen import InvalidEvent
from sqreen.event import MAX_EVENT_BYTES

from .conftest import stored_events


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int


class Unbool:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth")


# Refused in both modes: the agent refused these too (TypeError), or they cannot be stored.
# The rules the agent relaxed are in test_compat.py.
CASES: list[tuple[Any, Any, str]] = [
    (123, None, "event_name must be a str, not int"),
    (None, None, "event_name must be a str, not NoneType"),
    (b"bytes", None, "event_name must be a str, not bytes"),
    ("", None, "event_name must have 1 to 255 characters, not 0"),
    ("x" * 256, None, "event_name must have 1 to 255 characters, not 256"),
    ("e", ["properties"], "options must be a dict, not list"),
    ("e", {"properties": "foo=bar"}, "properties must be a dict, not str"),
    ("e", {"properties": {1: "a"}}, "key 1 of type int; keys must be str"),
    ("e", {"properties": {"s": {1, 2}}}, "properties['s'] is a set"),
    ("e", {"properties": {"b": b"raw"}}, "properties['b'] is a bytes"),
    ("e", {"properties": {"o": object()}}, "properties['o'] is a object"),
    ("e", {"properties": {"n": float("nan")}}, "properties['n'] is nan"),
    ("e", {"properties": {"i": float("inf")}}, "properties['i'] is inf"),
    ("e", {"properties": {"d": [1, {"x": -float("inf")}]}}, "properties['d'][1]['x'] is -inf"),
    ("e", {"properties": {"t": datetime(2020, 1, 1)}}, "properties['t'] is a datetime"),
    ("e", {"properties": {"t": date(2020, 1, 1)}}, "properties['t'] is a date"),
    ("e", {"properties": {"u": uuid.uuid4()}}, "properties['u'] is a UUID"),
    ("e", {"properties": {"c": Color.RED}}, "properties['c'] is a Color"),
    ("e", {"properties": {"p": Point(1)}}, "properties['p'] is a Point"),
    ("e", {"properties": {"m": Decimal("1.5")}}, "properties['m'] is a Decimal"),
    ("e", {"properties": {"n": {2: "x"}}}, "properties['n'] has a key 2 of type int"),
    ("e", {"properties": {"big": 2**70}}, "cannot be encoded as JSON"),
    ("e", {"user_identifiers": "bob"}, "user_identifiers must be a dict of str to str or int"),
    ("e", {"user_identifiers": {"id": 4.2}}, "'id': 4.2 is str to float"),
    ("e", {"user_identifiers": {"id": True}}, "'id': True is str to bool"),
    ("e", {"user_identifiers": {1: "x"}}, "must map str to str or int; 1: 'x'"),
    ("e", {"user_identifiers": {"id": 2**64}}, "cannot be encoded as JSON"),
    ("e", {"collect_body": Unbool()}, "collect_body (Unbool) has no truth value"),
    ("e", {"timestamp": "2018-03-15"}, "timestamp must be a datetime, not str"),
    ("e", {"timestamp": date(2018, 3, 15)}, "timestamp must be a datetime, not date"),
    ("e", {"timestamp": 1521124920}, "timestamp must be a datetime, not int"),
    ("e", {"properties": {"blob": "x" * MAX_EVENT_BYTES}}, "over the limit of 65536"),
]


@pytest.mark.parametrize(("name", "options", "message"), CASES)
def test_invalid_input_raises_invalid_event(
    spooler: sqreen.Spooler, spool_path: Path, name: Any, options: Any, message: str
) -> None:
    with pytest.raises(sqreen.InvalidEvent) as caught:
        spooler.track(name, options)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TypeError)  # as the agent's own TypeError
    spooler.track("after")  # the spool is fine and holds only the valid event
    assert [e["name"] for e in stored_events(spool_path)] == ["after"]


def test_too_deep_nesting_is_refused(spooler: sqreen.Spooler) -> None:
    value: Any = "leaf"
    for _ in range(40):
        value = [value]
    with pytest.raises(sqreen.InvalidEvent, match="nested more than 32 levels"):
        spooler.track("deep", {"properties": {"v": value}})


def test_limits_are_inclusive(spooler: sqreen.Spooler, spool_path: Path) -> None:
    assert spooler.track("x" * 255, {"properties": {f"p{i}": i for i in range(16)}})
    assert spooler.track("tuple", {"properties": {"t": (1, 2)}})
    events = stored_events(spool_path)
    assert len(events[0]["properties"]) == 16
    assert events[1]["properties"] == {"t": [1, 2]}


def test_module_level_track_validates_too() -> None:
    with pytest.raises(sqreen.InvalidEvent, match="event_name must be a str"):
        sqreen.track(123)  # type: ignore[arg-type]


class _RaisingOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset today")


class _TextOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> Any:
        return "+01:00"


class _ThirtyHours(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)


@pytest.mark.parametrize(
    "timestamp",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))),
        datetime(2024, 1, 1, tzinfo=_RaisingOffset()),
        datetime(2024, 1, 1, tzinfo=_TextOffset()),
        datetime(2024, 1, 1, tzinfo=_ThirtyHours()),
    ],
    ids=["year-0", "year-10000", "offset-raises", "offset-is-text", "offset-30h"],
)
def test_a_timestamp_that_has_no_utc_time_is_an_invalid_event(
    spooler: sqreen.Spooler, timestamp: datetime
) -> None:
    with pytest.raises(InvalidEvent, match="timestamp"):
        spooler.track("e", {"timestamp": timestamp})


class _ItemsRaise(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("items")


class _LenRaises(dict):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise RuntimeError("len")


class _Hides(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return iter(())


class _GetRaises(Mapping[str, Any]):
    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("getitem")

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("get")

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@pytest.mark.parametrize(
    "options",
    [
        _ItemsRaise(properties={"a": 1}),
        _LenRaises(properties={"a": 1}),
        {"properties": _ItemsRaise(a=1)},
        {"properties": _LenRaises(a=1)},
        {"user_identifiers": _ItemsRaise(email="a@b.c")},
        _GetRaises(properties={"a": 1}),
    ],
    ids=["options-items", "options-len", "props-items", "props-len", "ids-items", "mapping-get"],
)
def test_an_odd_mapping_is_stored_as_it_holds_or_refused(
    spooler: sqreen.Spooler, spool_path: Path, options: Any
) -> None:
    try:
        assert spooler.track("e", options)
    except InvalidEvent:
        return
    (stored,) = stored_events(spool_path)
    assert stored.get("properties", {}).get("a", 1) == 1


@pytest.mark.parametrize(
    "value", [datetime(2024, 1, 1), uuid.uuid4(), float("nan")], ids=["datetime", "uuid", "nan"]
)
def test_a_mapping_cannot_hide_what_it_holds(spooler: sqreen.Spooler, value: Any) -> None:
    with pytest.raises(InvalidEvent):
        spooler.track("e", {"properties": _Hides(x=value)})
    with pytest.raises(InvalidEvent):
        spooler.track("e", {"properties": {"nested": _Hides(x=value)}})
    with pytest.raises(InvalidEvent):
        spooler.track("e", _Hides(properties={"x": value}))
