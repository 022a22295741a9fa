"""Security responses: the actions a collector (or an operator) asks every process to enforce,
in the Sqreen agent's format, and the compiled set that requests are checked against.

An action is ``{"action": name, "action_id": str, "parameters": {...}, "duration": seconds or
null, "send_response": bool}``; the names are ``block_ip``, ``redirect_ip`` (parameters
``ip_cidr``: addresses or CIDR ranges, v4 and v6; ``url`` for a redirect), ``block_user`` and
``redirect_user`` (``users``: identifier dicts; ``url``). Reading one never raises: what cannot
be enforced is reported as a problem and skipped, and never stops the others.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from heapq import heappop, heappush
from itertools import pairwise
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..config import MAX_SECONDS

IP_ACTIONS = ("block_ip", "redirect_ip")
USER_ACTIONS = ("block_user", "redirect_user")
NAMES = IP_ACTIONS + USER_ACTIONS
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Action:
    """One action as stored: ``expires_at`` is absolute (Unix seconds), None for never."""

    action: str
    action_id: str
    ip_cidr: tuple[str, ...] = ()
    # The ranges of ip_cidr as (IP version, first address, last address), parsed once.
    networks: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)
    users: tuple[Mapping[str, str | int], ...] = ()
    url: str | None = None
    expires_at: float | None = None
    send_response: bool = True
    source: str = "collector"

    @property
    def blocks(self) -> bool:
        return self.action.startswith("block_")

    def parameters(self) -> dict[str, Any]:
        """The action's parameters, as the agent's format writes them."""
        found: dict[str, Any] = {}
        if self.ip_cidr:
            found["ip_cidr"] = list(self.ip_cidr)
        if self.users:
            found["users"] = [dict(user) for user in self.users]
        if self.url is not None:
            found["url"] = self.url
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "action_id": self.action_id,
            "parameters": self.parameters(),
            "expires_at": self.expires_at,
            "send_response": self.send_response,
            "source": self.source,
        }

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


class Malformed(ValueError):
    """An action that cannot be enforced; the message says why."""


def read_action(document: object, received_at: float, source: str = "collector") -> Action:
    """An action from the agent's format (``duration`` counted from ``received_at``), or
    Malformed naming the problem (an unknown name among them)."""
    document, action_id, name, parameters = _identity(document)
    send_response = document.get("send_response", True)
    if not isinstance(send_response, bool):
        raise Malformed(f"{action_id}: send_response must be a bool")
    url = parameters.get("url")
    if name.startswith("redirect_"):
        url = check_url(url, action_id)
    elif url is not None:
        raise Malformed(f"{action_id}: only a redirect has a url")
    duration = _duration(document.get("duration"), action_id)
    found = Action(
        action=name,
        action_id=action_id,
        url=url,
        expires_at=None if duration is None else received_at + duration,
        send_response=send_response,
        source=source,
    )
    if name in IP_ACTIONS:
        networks = _networks(parameters.get("ip_cidr"), action_id)
        return replace(found, ip_cidr=networks[0], networks=networks[1])
    return replace(found, users=_users(parameters.get("users"), action_id))


def _identity(document: object) -> tuple[Mapping[str, Any], str, str, Mapping[str, Any]]:
    """An action as a mapping, its id, name and parameters, checked."""
    if not isinstance(document, Mapping):
        raise Malformed(f"an action must be an object, not {type(document).__name__}")
    name = document.get("action")
    action_id = document.get("action_id")
    if not isinstance(action_id, str) or not action_id:
        raise Malformed(f"action {name!r} has no action_id")
    if name not in NAMES:
        raise Malformed(f"unknown action {name!r} ({action_id})")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise Malformed(f"{action_id}: parameters must be an object")
    return document, action_id, str(name), parameters


def _duration(duration: object, action_id: str) -> float | None:
    """Seconds from 0 to MAX_SECONDS, or None (never expires)."""
    if duration is None:
        return None
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not math.isfinite(duration)
        or duration < 0
    ):
        raise Malformed(f"{action_id}: duration must be a number of seconds >= 0 or null")
    if duration > MAX_SECONDS:
        raise Malformed(f"{action_id}: duration must be at most {MAX_SECONDS:.0f} seconds")
    return float(duration)


def _networks(
    networks: object, action_id: str
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The ranges as given, and as ``(version, first, last)`` integers."""
    if not isinstance(networks, list) or not networks:
        raise Malformed(f"{action_id}: ip_cidr must be a non-empty list")
    parsed = tuple(
        (network.version, int(network.network_address), int(network.broadcast_address))
        for network in (parse_network(text, action_id) for text in networks)
    )
    return tuple(networks), parsed


def _users(users: object, action_id: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(users, list) or not users:
        raise Malformed(f"{action_id}: users must be a non-empty list of identifier objects")
    for user in users:
        if (
            not isinstance(user, Mapping)
            or not user
            or not all(
                type(k) is str and type(v) in (str, int) and type(v) is not bool
                for k, v in user.items()
            )
        ):
            raise Malformed(f"{action_id}: each user must map str to str or int")
    return tuple(dict(user) for user in users)


def check_url(url: object, action_id: str) -> str:
    """A redirect's URL as a ``Location`` header can carry it: an absolute http(s) URL of
    ASCII characters with no control character. A host in another script is IDNA-encoded and
    other non-ASCII characters percent-encoded; what cannot be is Malformed."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise Malformed(f"{action_id}: a redirect needs a url")
    wrong = Malformed(f"{action_id}: the redirect url must be an absolute http(s) URL")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in url):
        raise wrong
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if not url.isascii():
            if host is None or parts.username is not None or parts.password is not None:
                raise wrong
            ascii_host = host.encode("idna").decode("ascii")
            netloc = ascii_host if port is None else f"{ascii_host}:{port}"
            url = urlunsplit(
                parts._replace(
                    netloc=netloc,
                    path=quote(parts.path, safe=_URL_SAFE),
                    query=quote(parts.query, safe=_URL_SAFE),
                    fragment=quote(parts.fragment, safe=_URL_SAFE),
                )
            )
    except (ValueError, UnicodeError):  # a bracket left open, a bad port, an invalid IDNA label
        raise wrong from None
    if parts.scheme not in ("http", "https") or not host:
        raise wrong
    return url


# Characters a URL keeps as they are when its other characters are percent-encoded.
_URL_SAFE = "/?:@!$&'()*+,;=-._~%#[]"
# Addresses no collector's action may cover: blocking them would lock the host out of itself.
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def check_scope(action: Action, widest: tuple[int, int]) -> None:
    """Refuse (Malformed) an IP action with a range wider than ``/widest[0]`` (IPv4) or
    ``/widest[1]`` (IPv6), or covering loopback: a collector (or a typo) could block the
    world. An operator can pass ``--force``; a collector cannot."""
    for text in action.ip_cidr:
        network = parse_network(text, action.action_id)
        limit = widest[0] if network.version == 4 else widest[1]
        if network.prefixlen < limit:
            raise Malformed(f"{action.action_id}: {network} is wider than /{limit}")
        if any(n.version == network.version and network.overlaps(n) for n in LOOPBACK):
            raise Malformed(f"{action.action_id}: {network} covers loopback")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: object, action_id: str = "") -> Network:
    """An address or a CIDR range (host bits allowed: ``10.1.2.3/8`` means ``10.0.0.0/8``)."""
    if not isinstance(text, str):
        raise Malformed(f"{action_id}: {text!r} is not an address or CIDR range")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise Malformed(f"{action_id}: {text!r} is not an address or CIDR range") from None


def user_key(identifiers: Mapping[str, object]) -> frozenset[tuple[str, str]]:
    """Identifiers as a lookup key: values compared as strings (``user_id=42`` typed on a
    command line matches the int 42 an application identified)."""
    return frozenset((key, str(value)) for key, value in identifiers.items())


@dataclass
class _Table:
    """Disjoint address ranges of one IP version, sorted: the action covering each, or None
    for a gap. A lookup is one bisection, whatever the number of ranges."""

    starts: list[int] = field(default_factory=list)
    actions: list[Action | None] = field(default_factory=list)

    def find(self, address: int) -> Action | None:
        index = bisect_right(self.starts, address) - 1
        return self.actions[index] if index >= 0 else None


def _table(ranges: Sequence[tuple[int, int, int, Action]]) -> _Table:
    """Flatten possibly overlapping ``(first, last, rank, action)`` ranges into disjoint ones,
    each held by the covering action of lowest rank."""
    by_start = sorted(ranges, key=lambda entry: entry[0])
    if all(a[1] < b[0] for a, b in pairwise(by_start)):
        return _disjoint(by_start)  # the usual list: no overlap, no sweep
    table = _Table()
    edges = sorted({first for first, _, _, _ in ranges} | {last + 1 for _, last, _, _ in ranges})
    active: list[tuple[int, int, int]] = []  # (rank, last, index into by_start)
    next_range = 0
    for edge in edges:  # a sweep over the ranges' edges, the best covering one on a heap
        while next_range < len(by_start) and by_start[next_range][0] <= edge:
            _, last, rank, _ = by_start[next_range]
            heappush(active, (rank, last, next_range))
            next_range += 1
        while active and active[0][1] < edge:  # ended before this edge
            heappop(active)
        holder = by_start[active[0][2]][3] if active else None
        if not table.actions or table.actions[-1] is not holder:
            table.starts.append(edge)
            table.actions.append(holder)
    return table


def _disjoint(by_start: Sequence[tuple[int, int, int, Action]]) -> _Table:
    table = _Table()
    for first, last, _, action in by_start:
        if not table.starts or table.starts[-1] != first:
            table.starts.append(first)
            table.actions.append(action)
        else:  # the previous range ended just before this one: its gap marker is this start
            table.actions[-1] = action
        table.starts.append(last + 1)
        table.actions.append(None)
    return table


class ActionSet:
    """The live actions, compiled for the per-request checks."""

    def __init__(self, actions: Iterable[Action] = (), now: float | None = None) -> None:
        # Compiled at ``now``: the actions expired by then are left out, and the set is due to
        # be compiled again at the earliest expiry of the others (see .enforcer.Enforcer).
        self.actions = tuple(a for a in actions if now is None or a.live(now))
        self.expires_next = min(
            (a.expires_at for a in self.actions if a.expires_at is not None), default=math.inf
        )
        ranges: dict[int, list[tuple[int, int, int, Action]]] = {4: [], 6: []}
        self._users: dict[frozenset[tuple[str, str]], Action] = {}
        # Blocks before redirects; then operator actions, then the collector's, in order.
        ranked = sorted(
            enumerate(self.actions),
            key=lambda pair: (not pair[1].blocks, pair[1].source != "operator", pair[0]),
        )
        self._ranked = tuple(action for _, action in ranked)
        for rank, (_, action) in enumerate(ranked):
            for version, first, last in action.networks:
                ranges[version].append((first, last, rank, action))
            for user in action.users:
                self._users.setdefault(user_key(user), action)
        self._tables = {version: _table(found) for version, found in ranges.items() if found}
        self.has_ip = bool(self._tables)
        self.has_users = bool(self._users)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def for_ip(self, ip: str | None, now: float) -> Action | None:
        """The action for a client IP, if any; a malformed IP matches nothing."""
        if not self.has_ip or not ip:
            return None
        found = _address(ip)
        if found is None:
            return None
        table = self._tables.get(found[0])
        action = table.find(found[1]) if table is not None else None
        if action is None or action.live(now):
            return action
        # Expired since this set was compiled (it is being compiled again): another live
        # action may cover the address too. Rare and brief: a scan, in rank order.
        version, address = found
        return next(
            (
                other
                for other in self._ranked
                if other.live(now)
                and any(v == version and a <= address <= b for v, a, b in other.networks)
            ),
            None,
        )

    def for_user(self, identifiers: Mapping[str, object], now: float) -> Action | None:
        """The action for an identified user: the action's identifier dict equals the
        identified one, values compared as strings."""
        if not self.has_users:
            return None
        key = user_key(identifiers)
        found = self._users.get(key)
        if found is None or found.live(now):
            return found
        return next(  # expired since compiled: another live action may name the user too
            (
                other
                for other in self._ranked
                if other.live(now) and any(user_key(user) == key for user in other.users)
            ),
            None,
        )


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _address(ip: str) -> tuple[int, int] | None:
    """``(version, address as an int)``, a v4-mapped v6 address as v4; None if malformed.
    By ``inet_pton``, a fraction of ``ipaddress.ip_address``'s cost on the request path."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")
