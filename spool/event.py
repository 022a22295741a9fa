"""Validation and encoding of one event: the only work ``track()`` does before its insert.

An event is encoded once, here, into the exact JSON object the collector receives, so that
delivery concatenates stored bytes instead of decoding and re-encoding them.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from .errors import InvalidEvent

MAX_NAME_LENGTH = 255
MAX_PROPERTIES = 16
MAX_EVENT_BYTES = 64 * 1024
MAX_DEPTH = 32
OPTION_KEYS = ("properties", "user_identifiers", "timestamp", "collect_body")
# Names of the library's own events (``sq.action.block_user``...): refused from applications.
RESERVED_PREFIX = "sq."

_OPTION_KEY_SET = frozenset(OPTION_KEYS)
_SCALARS = (str, int, bool, type(None))


class Strictness(NamedTuple):
    """How strictly events are checked. Where the real agent was lenient (an unknown option
    key, more than 16 properties, a reserved name...), a lenient spooler calls ``warn`` with a
    kind and a message and goes on as the agent did; a strict one raises InvalidEvent. Plain
    warnings (track's identifiers differ from identify's) go to ``warn`` in both modes."""

    strict: bool
    warn: Callable[[str, str], None]


def _unheard(kind: str, message: str) -> None:
    """The strict mode's warn: no lenient rule reaches it, and no request context either."""


STRICT = Strictness(True, _unheard)


class Event(NamedTuple):
    """One validated event, ready for the spool."""

    id: str
    name: str
    payload: bytes
    security: bool = False  # its class (see sqreen.priority), decided by the spooler


def build(
    event_name: object,
    options: object,
    user: Mapping[str, str | int] | None = None,
    request: Callable[[bool], bytes] | None = None,
    rules: Strictness = STRICT,
) -> Event:
    """Validate ``track()``'s arguments and encode the event; raise InvalidEvent on a mistake.

    ``user`` (from ``identify()``) applies unless the options name ``user_identifiers``;
    ``request`` gives the current request's object, already encoded (once per request), with
    its body's fields or without (``collect_body``). ``rules``: see :class:`Strictness`.
    """
    event_name = check_name(event_name)
    timestamp = properties = identifiers = None
    collect_body = False
    if options is not None:
        options = read_options(options)
        if not _OPTION_KEY_SET.issuperset(options):
            relax(rules, "unknown_option", _unknown_keys_message(options))
        timestamp = options.get("timestamp")
        properties = options.get("properties")
        identifiers = options.get("user_identifiers")
        wants_body = options.get("collect_body")  # None, as for the others, means absent
        if wants_body is not None:
            collect_body = as_bool(wants_body, "collect_body", rules)
    event_id = new_id()
    record: dict[str, Any] = {"id": event_id, "name": event_name, "timestamp": _utc(timestamp)}
    if properties is not None:
        properties = check_properties(properties, rules=rules, event_name=event_name)
        if properties:
            record["properties"] = properties
    if identifiers is not None:
        identifiers = check_identifiers(identifiers, "user_identifiers")
        if identifiers:
            record["user_identifiers"] = identifiers
        if user and identifiers and not same_user(identifiers, user):
            rules.warn(
                "identifiers_differ",
                f"event {event_name!r}: its user_identifiers differ from those given to "
                "identify() for this request; the event keeps its own",
            )
    elif user:
        record["user_identifiers"] = user
    try:
        payload = orjson.dumps(record)
    except orjson.JSONEncodeError as exc:  # integers beyond 64 bits, mostly
        raise InvalidEvent(f"event {event_name!r} cannot be encoded as JSON: {exc}") from None
    if request is not None:
        payload = b'%s,"request":%s}' % (payload[:-1], request(collect_body))
    if len(payload) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            f"event {event_name!r} encodes to {len(payload)} bytes, over the limit of "
            f"{MAX_EVENT_BYTES}"
        )
    return Event(event_id, event_name, payload)


def check_name(event_name: object) -> str:
    """``event_name``, or InvalidEvent unless it is a str of 1 to 255 characters."""
    if type(event_name) is not str:
        raise InvalidEvent(f"event_name must be a str, not {type(event_name).__name__}")
    if not event_name or len(event_name) > MAX_NAME_LENGTH:
        raise InvalidEvent(
            f"event_name must have 1 to {MAX_NAME_LENGTH} characters, not {len(event_name)}"
        )
    return event_name


def relax(rules: Strictness, kind: str, message: str) -> None:
    """Apply one of the agent's relaxed rules: raise when strict, else warn and go on."""
    if rules.strict:
        raise InvalidEvent(message)
    rules.warn(kind, message)


def same_user(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """Whether two identifier dicts name the same user: the same keys, and values equal as
    strings (``user_id=42`` typed on a command line is the int 42 an application identified)."""
    return a.keys() == b.keys() and all(str(value) == str(b[key]) for key, value in a.items())


def as_bool(value: object, what: str, rules: Strictness) -> bool:
    """``value`` where a bool is expected: the agent took any value for its truth."""
    if type(value) is bool:
        return value
    relax(rules, f"{what}_not_bool", f"{what} must be a bool, not {type(value).__name__}")
    try:
        return bool(value)
    except Exception as exc:  # a __bool__ that raises is the caller's mistake, named as such
        raise InvalidEvent(
            f"{what} ({type(value).__name__}) has no truth value: {type(exc).__name__}"
        ) from None


_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


# Ids are made in batches, from one urandom() call each: in track()'s path, between two SQLite
# commits, making one id alone cost 5 µs of a 50 µs call; taking one from a batch costs a tenth
# of that. Each batch belongs to the process that made it (the pid): a child forked without
# Python's at-fork hooks (uWSGI forks in C) must never hand out its parent's remaining ids.
_ID_BATCH = 64
_ids: tuple[int, Iterator[str]] = (0, iter(()))


def new_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` at a fraction of its cost.

    Safe across threads: ``next()`` on a list iterator is atomic, and two threads that find the
    batch empty at once each make their own.
    """
    global _ids
    pid, ids = _ids
    event_id = next(ids, None)
    if event_id is None or pid != os.getpid():
        ids = iter(_make_ids())
        _ids = (os.getpid(), ids)
        event_id = next(ids)
    return event_id


def _make_ids() -> list[str]:
    h = os.urandom(16 * _ID_BATCH).hex()
    # The version digit is 4; the variant digit's top bits are 10 (8, 9, a or b).
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * _ID_BATCH, 32)
    ]


def check_identifiers(identifiers: object, what: str) -> dict[str, str | int]:
    """``identifiers`` as a plain dict, or InvalidEvent naming ``what`` unless it is a mapping
    of str to str or int (the agent's ``UserIdentifier``; a bool or a float is neither)."""
    identifiers = read_mapping(identifiers, what, "a dict of str to str or int")
    for key, value in identifiers.items():
        if type(key) is not str or type(value) not in _IDENTIFIER_TYPES:
            raise InvalidEvent(
                f"{what} must map str to str or int; {key!r}: {value!r} is "
                f"{type(key).__name__} to {type(value).__name__}"
            )
    return identifiers


_IDENTIFIER_TYPES = (str, int)


def read_options(options: object) -> dict[Any, Any]:
    """``track()``'s options, read once into a plain dict."""
    return read_mapping(options, "options", "a dict")


def read_mapping(value: object, what: str, expected: str) -> dict[Any, Any]:
    """``value`` read once into a plain dict (as the agent's ``dict(options)``): a caller's
    mapping whose methods raise, or lie about what it holds, is an InvalidEvent naming
    ``what``, never another exception."""
    if type(value) is dict:
        return value
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"{what} must be {expected}, not {type(value).__name__}")
    try:
        # A dict subclass is copied from its storage (what orjson would encode), whatever its
        # items() says; another Mapping through its keys and __getitem__.
        return dict(value) if not isinstance(value, dict) else dict(dict.items(value))
    except Exception as exc:
        raise InvalidEvent(
            f"{what} ({type(value).__name__}) could not be read: {type(exc).__name__}"
        ) from None


def _unknown_keys_message(options: Mapping[Any, Any]) -> str:
    parts = []
    for key in options:
        if key in _OPTION_KEY_SET:
            continue
        close = difflib.get_close_matches(str(key), OPTION_KEYS, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown option key(s) {', '.join(parts)}; allowed: {', '.join(OPTION_KEYS)}"


def check_properties(
    properties: object,
    what: str = "properties",
    rules: Strictness = STRICT,
    event_name: str | None = None,
) -> dict[str, Any]:
    """``properties`` as a plain dict of plain JSON values, or InvalidEvent.

    More than 16 entries: strict, an InvalidEvent; lenient, the first 16 in sorted key order
    are kept (as the agent kept them), after every value was checked.
    """
    properties = check_json(properties, what)
    if len(properties) > MAX_PROPERTIES:
        of = f" of event {event_name!r}" if event_name is not None else ""
        relax(
            rules,
            "too_many_properties",
            f"{what}{of} has {len(properties)} entries; at most {MAX_PROPERTIES} are allowed"
            + ("" if rules.strict else f"; kept the first {MAX_PROPERTIES} in sorted key order"),
        )
        properties = dict(sorted(properties.items())[:MAX_PROPERTIES])
    return properties


def check_json(value: object, what: str) -> dict[str, Any]:
    """``value`` as a plain dict of plain JSON values, or InvalidEvent naming the problem."""
    found = read_mapping(value, what, "a dict")
    problem = _json_problem(found, 0)
    if problem is not None:
        raise InvalidEvent(f"{what}{problem}")
    return found


def _json_problem(value: Any, depth: int) -> str | None:
    """Say what in ``value`` is not plain JSON, as a path and a reason; None if all is well.

    orjson alone is not enough: it writes NaN as null and encodes datetimes, UUIDs, enums and
    dataclasses, which would reach the collector as something the caller did not write. The path
    is built only on the way out of a failure, as this walk runs on every track() call.
    Containers are read through the base types' own methods, as orjson reads them: a subclass
    whose items() or __iter__ says otherwise cannot hide what it holds.
    """
    kind = type(value)
    if kind in _SCALARS:
        return None
    if kind is float:
        return None if math.isfinite(value) else f" is {value!r}, which JSON cannot represent"
    if depth >= MAX_DEPTH:
        return f" is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in dict.items(value):
            if type(key) is not str:
                return f" has a key {key!r} of type {type(key).__name__}; keys must be str"
            if type(item) not in _SCALARS and (problem := _json_problem(item, depth + 1)):
                return f"[{key!r}]{problem}"
        return None
    if isinstance(value, list | tuple):
        items = list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value)
        for index, item in enumerate(items):
            if type(item) not in _SCALARS and (problem := _json_problem(item, depth + 1)):
                return f"[{index}]{problem}"
        return None
    return f" is a {kind.__name__}, which is not a JSON value"


def _utc(timestamp: object) -> datetime:
    if timestamp is None:
        return datetime.now(UTC)
    if not isinstance(timestamp, datetime):
        raise InvalidEvent(f"timestamp must be a datetime, not {type(timestamp).__name__}")
    if timestamp.tzinfo is UTC:
        return timestamp
    try:
        if timestamp.tzinfo is None or timestamp.utcoffset() is None:
            return timestamp.replace(tzinfo=UTC)
        return timestamp.astimezone(UTC)
    except OverflowError:
        raise InvalidEvent(f"timestamp {timestamp.isoformat()} is out of range in UTC") from None
    except Exception as exc:  # a tzinfo whose utcoffset() raises or answers nonsense
        raise InvalidEvent(
            f"timestamp's tzinfo ({type(timestamp.tzinfo).__name__}) gives no valid UTC offset: "
            f"{type(exc).__name__}"
        ) from None
