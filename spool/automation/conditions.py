"""Dimensions (paths into a wire event) and the conditions of a playbook's ``where``.

A dimension is ``name``, ``ip`` (the request's client IP, only when it is one address), ``user``
(the identifiers as a whole, compared as the security responses compare them), ``user.<key>``,
``properties.<path>`` (dotted, into nested objects) or ``request.<field>``. A value an attacker
shaped (a range for an IP, an empty identifier set) is no value: an event without one is not
counted, so that nobody can make a playbook key on ``0.0.0.0/0``.

A condition is a plain value (equality) or a table of one operator: ``in``, ``not``,
``matches`` (a regular expression, searched in at most :data:`MATCH_CHARS` characters),
``gt``/``ge``/``lt``/``le`` (numbers; booleans are not numbers), ``cidr`` (a list of ranges).
A missing value fails every operator but ``not``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..request.context import DIMENSIONS as REQUEST_FIELDS
from ..security.actions import Malformed, Network, parse_network, user_key

MISSING: Any = object()
# A regular expression runs on at most this many characters of a value: Python's engine has no
# timeout, and the values are the attacker's.
MATCH_CHARS = 4096
MAX_PATTERN = 512
OPERATORS = ("in", "not", "matches", "gt", "ge", "lt", "le", "cidr")


class Invalid(ValueError):
    """A dimension or a condition a playbook file cannot use; the message says why."""


@dataclass(frozen=True)
class Dimension:
    """A path into a wire event; :meth:`of` reads it (MISSING when the event has none)."""

    path: str
    read: Callable[[Mapping[str, Any]], Any]

    def of(self, event: Mapping[str, Any]) -> Any:
        return self.read(event)


def dimension(path: object) -> Dimension:
    """The dimension a path names; Invalid for one that names nothing."""
    if not isinstance(path, str) or not path:
        raise Invalid(
            "a dimension is a string: name, ip, user, user.<key>, properties.<path>, "
            "request.<field>"
        )
    head, _, rest = path.partition(".")
    if path == "name":
        return Dimension(path, lambda e: e.get("name", MISSING))
    if path == "ip":
        return Dimension(path, client_ip)
    if path == "user":
        return Dimension(path, user)
    if head == "user" and rest:
        return Dimension(path, lambda e: _get(e.get("user_identifiers"), (rest,)))
    if head == "properties" and rest and all(rest.split(".")):
        keys = tuple(rest.split("."))
        return Dimension(path, lambda e: _get(e.get("properties"), keys))
    if head == "request" and rest in REQUEST_FIELDS:
        return Dimension(path, lambda e: _get(e.get("request"), (rest,)))
    if head == "request":
        raise Invalid(f"{path!r}: a request field is one of {', '.join(REQUEST_FIELDS)}")
    raise Invalid(
        f"{path!r} is not a dimension (name, ip, user, user.<key>, "
        "properties.<path>, request.<field>)"
    )


def client_ip(event: Mapping[str, Any]) -> Any:
    """The request's client IP as one canonical address, or MISSING (a range is no address)."""
    text = _get(event.get("request"), ("ip",))
    return _address(text) if isinstance(text, str) else MISSING


@functools.lru_cache(maxsize=1 << 16)  # the same few addresses come again and again
def _address(text: str) -> Any:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return MISSING


def user(event: Mapping[str, Any]) -> Any:
    """The user identifiers as one comparable key (sorted pairs, values as strings), or
    MISSING when the event names no user."""
    identifiers = event.get("user_identifiers")
    if not isinstance(identifiers, dict) or not identifiers:
        return MISSING
    return tuple(sorted(user_key(identifiers)))


def _get(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


Test = Callable[[Any], bool]


@dataclass(frozen=True)
class Condition:
    """One entry of ``where``: a dimension and the test its value must pass."""

    dimension: Dimension
    test: Test

    def holds(self, event: Mapping[str, Any]) -> bool:
        return self.test(self.dimension.of(event))


def condition(path: str, spec: object) -> Condition:
    """The condition ``path = spec`` of a ``where`` table; Invalid saying what is wrong."""
    return Condition(dimension(path), _test(spec))


def _test(spec: object) -> Test:
    if not isinstance(spec, dict):
        _scalar(spec, "a value to compare with")
        return lambda value: value is not MISSING and _equal(value, spec)
    if len(spec) != 1:
        raise Invalid(f"a condition table holds exactly one operator ({', '.join(OPERATORS)})")
    ((operator, operand),) = spec.items()
    if operator == "in":
        if not isinstance(operand, list) or not operand:
            raise Invalid("'in' takes a non-empty list")
        for item in operand:
            _scalar(item, "an 'in' list item")
        return lambda value: value is not MISSING and any(_equal(value, o) for o in operand)
    if operator == "not":
        _scalar(operand, "'not'")
        return lambda value: value is MISSING or not _equal(value, operand)
    if operator == "matches":
        return _matches(operand)
    if operator in ("gt", "ge", "lt", "le"):
        return _compare(operator, operand)
    if operator == "cidr":
        return _cidr(operand)
    raise Invalid(f"unknown operator {operator!r} (one of {', '.join(OPERATORS)})")


def _scalar(value: object, what: str) -> None:
    if not isinstance(value, str | int | float | bool):
        raise Invalid(f"{what} must be a string, a number or a boolean")


def _equal(value: Any, expected: Any) -> bool:
    # True is not 1 here: a property false and a count 0 are different things.
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return bool(value == expected)


def _matches(pattern: object) -> Test:
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        raise Invalid(f"'matches' takes a regular expression of at most {MAX_PATTERN} characters")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise Invalid(f"'matches': {pattern!r} is not a regular expression ({exc})") from None
    return lambda value: isinstance(value, str) and compiled.search(value[:MATCH_CHARS]) is not None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _compare(operator: str, operand: object) -> Test:
    if not _number(operand):
        raise Invalid(f"{operator!r} takes a number")
    compare, bound = _COMPARE[operator], float(operand)  # type: ignore[arg-type]
    return lambda value: _number(value) and compare(value, bound)


def _cidr(operand: object) -> Test:
    if not isinstance(operand, list) or not operand:
        raise Invalid("'cidr' takes a non-empty list of ranges")
    networks = [network(item, "'cidr'") for item in operand]

    def inside(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(address in n for n in networks if n.version == address.version)

    return inside


def network(text: object, what: str) -> Network:
    """A range from a playbook file; Invalid naming ``what`` when it is not one."""
    try:
        return parse_network(text, what)
    except Malformed as exc:
        raise Invalid(str(exc)) from None
