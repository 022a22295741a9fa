"""The wire: one POST of a batch to the collector, and what its answer means.

The body is assembled from the events' stored bytes, never decoded and re-encoded::

    {"batch_id": str, "sent_at": ISO-8601 UTC, "events": [<stored event>, ...],
     "dropped": {"age": n, "size": n, "rejected": n, "purged": n}}   # omitted when all zero
"""

from __future__ import annotations

import email.utils
import gzip
import ipaddress
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx
import orjson

from .config import Settings
from .errors import ConfigError

GZIP_ABOVE = 1024
GZIP_LEVEL = 1  # most of the gain at a fraction of level 6's cost, on JSON this repetitive

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
SPLIT_STATUSES = frozenset({413})
BISECT_STATUSES = frozenset({400, 422})


@dataclass(frozen=True)
class Reply:
    """What came back for one POST: a status, or an error when no response came."""

    status: int | None
    error: str = ""
    retry_after: float | None = None
    rejected: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth another try soon: no response at all, a timeout, 408, 429 or 5xx."""
        return self.status is None or self.status in RETRYABLE_STATUSES

    def describe(self) -> str:
        return self.error if self.status is None else f"HTTP {self.status} {self.error}".strip()


def check_url(url: str, allow_insecure_http: bool) -> None:
    """Refuse plain http:// to anything but loopback unless explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme == "https" or allow_insecure_http:
        return
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            f"SQREEN_URL {url!r} is plain http to a non-loopback host; use https, or set "
            "SQREEN_SPOOL_ALLOW_INSECURE_HTTP=1 if the network is trusted"
        )


def encode_batch(batch_id: str, payloads: Sequence[bytes], dropped: Mapping[str, int]) -> bytes:
    sent_at = datetime.now(timezone.utc).isoformat()
    head = b'{"batch_id":"%s","sent_at":"%s","events":[' % (batch_id.encode(), sent_at.encode())
    tail = b"]}" if not dropped else b'],"dropped":' + orjson.dumps(dropped) + b"}"
    return head + b",".join(payloads) + tail


class Transport:
    """Posts batches to the collector over one keep-alive connection per process."""

    def __init__(self, settings: Settings, user_agent: str) -> None:
        if settings.url is None:
            raise ConfigError("no collector URL: set SQREEN_URL")
        check_url(settings.url, settings.allow_insecure_http)
        self.url = settings.url
        self._timeout = settings.http_timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent}
        if settings.token:
            self._headers["Authorization"] = f"Bearer {settings.token}"
        self._client: httpx.Client | None = None
        self._pid = 0
        # Built now, in the caller's thread: httpx imports modules and builds its TLS context on
        # first use, and a fork() while the background thread held an import lock would leave
        # the child hanging on that lock forever.
        self._session()

    def post(
        self,
        batch_id: str,
        payloads: Sequence[bytes],
        dropped: Mapping[str, int],
        timeout: float | None = None,
    ) -> Reply:
        """POST one batch within ``timeout`` seconds at most; network trouble becomes a Reply.

        Retries of a batch reuse its ``batch_id`` (the Idempotency-Key).
        """
        body = encode_batch(batch_id, payloads, dropped)
        headers = {"Idempotency-Key": batch_id}
        if len(body) > GZIP_ABOVE:
            body = gzip.compress(body, GZIP_LEVEL, mtime=0)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._session().post(
                self.url,
                content=body,
                headers=headers,
                timeout=self._timeout if timeout is None else min(self._timeout, timeout),
            )
        except httpx.TimeoutException as exc:
            return Reply(None, f"timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return Reply(None, f"{type(exc).__name__}: {exc}")
        if response.is_success:
            return Reply(response.status_code, "", None, rejected_ids(response))
        detail = response.text[:200].strip()
        return Reply(
            response.status_code,
            f"{response.reason_phrase}: {detail}" if detail else response.reason_phrase,
            retry_after(response.headers.get("Retry-After")),
        )

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def _session(self) -> httpx.Client:
        # A client inherited across fork() shares its sockets with the parent: make a new one.
        if self._client is None or self._pid != os.getpid():
            self._client = httpx.Client(
                headers=self._headers, timeout=self._timeout, verify=True, follow_redirects=False
            )
            self._pid = os.getpid()
        return self._client


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def rejected_ids(response: httpx.Response) -> dict[str, str]:
    """Per-event refusals from a 2xx body ``{"rejected": [{"id", "reason"}]}``, by id."""
    if not response.content:
        return {}
    try:
        document = orjson.loads(response.content)
        items = document.get("rejected") or [] if isinstance(document, dict) else []
        return {str(item["id"]): str(item.get("reason", "")) for item in items}
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        return {}
