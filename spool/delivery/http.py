"""The HTTP sink: one POST of a batch to the collector, and what its answer means.

The body (see :mod:`sqreen.wire`) is assembled from the events' stored bytes, never decoded and
re-encoded; the answer is read in bounded memory and never settles a batch unless read whole.
"""

from __future__ import annotations

import email.utils
import gzip
import ipaddress
import logging
import math
import os
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from .. import clock
from ..config import Settings
from ..errors import ConfigError
from ..urls import mask_url
from ..wire import MAX_ANSWER, encode_batch, read_answer
from .sink import Reply

log = logging.getLogger("sqreen.spool")
T = TypeVar("T")

GZIP_ABOVE = 1024
GZIP_LEVEL = 1  # most of the gain at a fraction of level 6's cost, on JSON this repetitive

# A collector's Retry-After is honoured up to an hour, the longest backoff a row ever waits: a
# larger value (a typo, a year-9999 date) would stop background delivery for good, while max_age
# already bounds how long an event may wait.
RETRY_AFTER_MAX = 3600.0
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


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


class Transport:
    """Posts batches to the collector over one keep-alive connection per process."""

    def __init__(self, settings: Settings, user_agent: str) -> None:
        if settings.url is None:
            raise ConfigError("no collector URL: set SQREEN_URL")
        check_url(settings.url, settings.allow_insecure_http)
        # Credentials in the URL go as an Authorization header, so that no URL that httpx
        # logs or puts in an error carries them (query values are masked by _MaskedURLs).
        parts = urlsplit(settings.url)
        self._auth = None
        if parts.username is not None or parts.password is not None:
            self._auth = httpx.BasicAuth(
                unquote(parts.username or ""), unquote(parts.password or "")
            )
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.url = urlunsplit(parts)
        _install_log_mask()
        self._timeout = settings.http_timeout
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": user_agent,
            "Accept-Encoding": ", ".join(_WBITS),  # what answer_body() decodes
        }
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
        ids: Sequence[str],
        payloads: Sequence[bytes],
        dropped: Mapping[str, int],
        timeout: float | None = None,
    ) -> Reply:
        """POST one batch within ``timeout`` seconds at most; network trouble becomes a Reply.

        Retries of a batch reuse its ``batch_id`` (the Idempotency-Key). The events' ``ids``
        are in their payloads already.
        """
        body = encode_batch(batch_id, payloads, dropped)
        headers = {"Idempotency-Key": batch_id}
        if len(body) > GZIP_ABOVE:
            body = gzip.compress(body, GZIP_LEVEL, mtime=0)
            headers["Content-Encoding"] = "gzip"
        budget = self._timeout if timeout is None else min(self._timeout, timeout)
        client = self._session()

        def exchange() -> tuple[httpx.Response, bytes]:
            with client.stream(
                "POST", self.url, content=body, headers=headers, timeout=budget
            ) as response:
                return response, answer_body(response)

        try:
            response, content = within(exchange, budget)
        except TimeoutError:
            # httpx's timeouts bound each read, not the request: a collector trickling its
            # answer a byte at a time would hold the flush, and the exit, for ever. The request
            # is left to finish on its own, on a client of its own.
            self._client = None
            return Reply(None, f"timeout: no whole answer within {budget:g} s")
        except httpx.TimeoutException as exc:
            return Reply(None, f"timeout: {type(exc).__name__}")
        except AnswerTooLarge as exc:  # retried, then halved: smaller batches, smaller answers
            return Reply(None, f"{exc}: not read whole", unread=True)
        except httpx.LocalProtocolError as exc:  # its text can quote a header, the token's too
            return Reply(None, f"{type(exc).__name__} (the request could not be sent)")
        except httpx.HTTPError as exc:  # transport trouble, a body that does not decode, ...
            return Reply(None, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the wire's any other failure is this batch's, not the loop's
            log.warning("sqreen spool: delivery failed unexpectedly", exc_info=True)
            return Reply(None, type(exc).__name__)
        if response.is_success:
            rejected, actions, urgent = read_answer(content)
            return Reply(response.status_code, "", None, rejected, actions, urgent=urgent)
        detail = content[:200].decode("utf-8", "replace").strip()
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
                headers=self._headers,
                auth=self._auth,
                timeout=self._timeout,
                verify=True,
                follow_redirects=False,
            )
            self._pid = os.getpid()
        return self._client


def within(work: Callable[[], T], seconds: float) -> T:
    """``work()``'s result, or TimeoutError once ``seconds`` have passed: it then goes on in a
    daemon thread, which neither the caller nor the interpreter's exit waits for."""
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="sqreen-spool:post", daemon=True).start()
    if not done.wait(max(0.0, seconds)):
        raise TimeoutError
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class _MaskedURLs(logging.Filter):
    """Masks credential-like query values in the URLs of httpx's own log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                mask_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _install_log_mask() -> None:
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _MaskedURLs) for f in httpx_log.filters):
        httpx_log.addFilter(_MaskedURLs())


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), at most
    :data:`RETRY_AFTER_MAX`; None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - clock.now()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if math.isnan(seconds):
        return None
    return min(RETRY_AFTER_MAX, max(0.0, seconds))


class AnswerTooLarge(Exception):
    """An answer's body, decoded, is over :data:`MAX_ANSWER`: it was not read whole."""


def answer_body(response: httpx.Response) -> bytes:
    """An answer's body, decoded (gzip, deflate), reading no more than :data:`MAX_ANSWER`
    bytes of it: an endless or huge body, or a compression bomb, costs no more memory than
    that. A body larger than that raises :class:`AnswerTooLarge`: a cut answer would read as
    "nothing rejected", so it must never settle a batch."""
    raw = bytearray()
    for chunk in response.iter_raw():
        raw += chunk
        if len(raw) > MAX_ANSWER:
            raise AnswerTooLarge(f"the answer is over {MAX_ANSWER} bytes")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return bytes(raw)
    if encoding not in _WBITS:
        raise httpx.DecodingError(f"unsupported Content-Encoding {encoding[:40]!r}")
    decoder = zlib.decompressobj(_WBITS[encoding])
    try:
        content = decoder.decompress(bytes(raw), MAX_ANSWER + 1)
    except zlib.error as exc:
        raise httpx.DecodingError(f"answer body is not valid {encoding}: {exc}") from None
    if len(content) > MAX_ANSWER or decoder.unconsumed_tail:
        raise AnswerTooLarge(f"the answer is over {MAX_ANSWER} bytes decoded")
    return content
