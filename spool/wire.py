"""The wire format, both directions: what a sink sends and a collector receives, and what a
collector answers. One module, used by the HTTP sink (``sqreen.delivery.http``), the JetStream
sink's drop reports and the reference collector (``sqreen.cli.reference``); it knows nothing of
the spool's storage.

A batch is one JSON object, its events the stored event JSON as it is (never decoded and
re-encoded by the sink)::

    {"batch_id": str, "sent_at": ISO-8601 UTC, "events": [<stored event>, ...],
     "dropped": {"age": n, "size": n, "rejected": n, "purged": n}}   # omitted when all zero

An answer (2xx) may say which events it refused, carry the security responses in force, and
name the events the collector's playbooks watch (applications deliver those early)::

    {"rejected": [{"id": str, "reason": str}, ...], "actions": [<action>, ...],
     "actions_omitted": n, "urgent": [event name, ...]}

An answer weighs at most :data:`MAX_ANSWER` bytes once decoded.

A collector bounds what a batch may cost before it parses it (:func:`parse_batch`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from .errors import InvalidEvent
from .event import MAX_NAME_LENGTH, check_identifiers, check_properties

# Why pending events were dropped, as the batches' ``dropped`` reports name them.
DROP_REASONS = ("age", "size", "rejected", "purged")

# The most a batch may weigh, on the wire and once decompressed: sixteen of the spool's
# largest batches (max_batch_bytes, 1 MiB by default).
MAX_BODY = 16 * 1024 * 1024
# The most an answer may weigh, decoded: applications read no more, and a collector keeps its
# answers within it (its list of actions cut to fit, the rest counted in "actions_omitted").
MAX_ANSWER = 1024 * 1024
# The most event names an answer's "urgent" list may hold (the rest are ignored).
MAX_URGENT = 1000
# The most events a batch may carry (ten of the spool's default batches), and the most JSON
# values (counted by the separators and openings) a body may hold before it is parsed: 16 MiB
# of "{}," would otherwise parse into half a GiB of empty dicts.
MAX_EVENTS = 10_000
MAX_VALUES = 400_000


class OutOfRange(ValueError):
    """A well-formed time that has no UTC equivalent (before year 1 or after 9999)."""


def parse_time(value: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime; naive means UTC, ``Z`` is accepted."""
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # fromisoformat takes an upper-case Z only
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise OutOfRange(f"{value!r} is out of range once converted to UTC") from None


def iso(seconds: float) -> str:
    """Unix seconds as the ISO-8601 UTC time the wire format and the tools show."""
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def encode_batch(batch_id: str, payloads: Sequence[bytes], dropped: Mapping[str, int]) -> bytes:
    sent_at = datetime.now(UTC).isoformat()
    head = b'{"batch_id":"%s","sent_at":"%s","events":[' % (batch_id.encode(), sent_at.encode())
    tail = b"]}" if not dropped else b'],"dropped":' + orjson.dumps(dropped) + b"}"
    return head + b",".join(payloads) + tail


def parse_batch(body: bytes) -> Any:
    """A decoded body as JSON, refused (TooLarge) when it holds more values or events than a
    batch may, before its parsing can cost more memory than a batch should."""
    values = body.count(b",") + body.count(b"{") + body.count(b"[")
    if values > MAX_VALUES:
        raise TooLarge(f"a batch may hold at most {MAX_VALUES} JSON values")
    batch = orjson.loads(body)
    events = batch.get("events") if isinstance(batch, dict) else None
    if isinstance(events, list) and len(events) > MAX_EVENTS:
        raise TooLarge(f"a batch may carry at most {MAX_EVENTS} events")
    return batch


class TooLarge(ValueError):
    """A body over MAX_BODY (413)."""


def decode(encoding: str | None, raw: bytes) -> bytes:
    """The body without its Content-Encoding; ValueError for one that cannot be undone."""
    if encoding in (None, "", "identity"):
        return raw
    if encoding != "gzip":
        raise ValueError(f"unsupported Content-Encoding {encoding!r}; send gzip or nothing")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflate.decompress(raw, MAX_BODY + 1)  # a bomb stops here, not in memory
    except zlib.error as exc:
        raise ValueError(f"body is not valid gzip: {exc}") from None
    if len(body) > MAX_BODY or inflate.unconsumed_tail:
        raise TooLarge(f"the body decompresses to over {MAX_BODY} bytes")
    if not inflate.eof:
        raise ValueError("body is not valid gzip: it ends early")
    return body


def check_batch(batch: Any) -> tuple[str | None, dict[str, str]]:
    """Check a batch against the wire format.

    Returns a reason to refuse the whole batch (400), or None and the events to reject one by
    one (by id, with a reason), as a collector acknowledging each event would.
    """
    problem = _check_head(batch)
    if problem is not None:
        return problem, {}
    rejected: dict[str, str] = {}
    for index, event in enumerate(batch["events"]):
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            return f"events[{index}] has no string 'id'", {}
        problem = check_event(event)
        if problem is not None:
            rejected[event["id"]] = problem
    return None, rejected


def _check_head(batch: Any) -> str | None:
    """What is wrong with a batch's own fields (all but its events' contents), or None."""
    if not isinstance(batch, dict):
        return "the body must be a JSON object"
    for key in ("batch_id", "sent_at"):
        if not isinstance(batch.get(key), str) or not batch[key]:
            return f"{key!r} must be a non-empty string"
    try:
        parse_time(batch["sent_at"])
    except ValueError as exc:
        return f"'sent_at': {exc}"
    dropped = batch.get("dropped", {})
    if not isinstance(dropped, dict) or any(
        key not in DROP_REASONS or type(n) is not int or n < 0 for key, n in dropped.items()
    ):
        return f"'dropped' must map {', '.join(DROP_REASONS)} to counts"
    if not isinstance(batch.get("events"), list):
        return "'events' must be a list"
    return None


def check_event(event: dict[str, Any]) -> str | None:
    """What is wrong with one wire event, or None."""
    try:
        UUID(event["id"])
    except ValueError:
        return "'id' is not a UUID"
    name = event.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return f"'name' must be a string of 1 to {MAX_NAME_LENGTH} characters"
    if not isinstance(event.get("timestamp"), str):
        return "'timestamp' must be an ISO-8601 string"
    try:
        parse_time(event["timestamp"])
        check_properties(event.get("properties", {}))
        check_identifiers(event.get("user_identifiers", {}), "user_identifiers")
    except (ValueError, InvalidEvent) as exc:
        return str(exc)
    if not isinstance(event.get("request", {}), dict):
        return "'request' must be an object"
    return None


# What an answer keeps free beyond its actions and what it held before them: the counts (and
# "actions_omitted") written after the actions.
ANSWER_MARGIN = 4096


def room_for_actions(answer: Mapping[str, Any]) -> int:
    """How many bytes of JSON a collector's actions may take in ``answer``, which holds all
    else it will say but the counts, for the whole to stay within MAX_ANSWER."""
    return MAX_ANSWER - len(orjson.dumps(answer)) - ANSWER_MARGIN


def add_actions(answer: dict[str, Any], actions: list[Any], omitted: int) -> None:
    """Put the actions that fit into ``answer``, and how many did not."""
    answer["actions"] = actions
    if omitted:
        answer["actions_omitted"] = omitted


def read_answer(content: bytes) -> tuple[dict[str, str], list[Any] | None, list[str] | None]:
    """From a 2xx body: the per-event refusals ``{"rejected": [{"id", "reason"}]}`` by id,
    the security responses ``{"actions": [...]}`` and the names to deliver early
    ``{"urgent": [...]}`` (each None when its key is absent: what is held stays as it is). A
    body that says none of them, or garbage, says nothing."""
    if not content:
        return {}, None, None
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}, None, None
    if not isinstance(document, dict):
        return {}, None, None
    actions = document.get("actions")
    urgent = document.get("urgent")
    if isinstance(urgent, list):  # at most MAX_URGENT names, each one an event could have
        urgent = sorted(
            {n for n in urgent if isinstance(n, str) and 0 < len(n) <= MAX_NAME_LENGTH}
        )[:MAX_URGENT]
    else:
        urgent = None
    try:
        items = document.get("rejected") or []
        rejected = {str(item["id"]): str(item.get("reason", "")) for item in items}
    except (TypeError, KeyError, AttributeError):
        rejected = {}
    return rejected, actions if isinstance(actions, list) else None, urgent
