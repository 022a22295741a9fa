"""Delivery into NATS JetStream (``SQREEN_URL=nats://...``): each event one message.

A message's body is the stored event JSON as it is, with the headers ``Nats-Msg-Id: <event id>``
(the stream drops an id published again within its duplicate window) and ``Sqreen-Batch-Id``.
An event is settled only once its own PubAck came back, one flagged duplicate included; the
others stay pending with the usual retry state. A message the stream refuses for good (larger
than it allows) rejects that event only. A drop report is a message on ``<subject>.dropped``,
acknowledged the same way before the batch's events are published.

nats-py is asynchronous. It runs on a private event loop in a thread of this sink's own, never
on the application's, started on first use and again in a child after ``fork()``, which opens
its own connection. nats-py is an optional extra (``sqreen-spool[nats]``), imported only here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config import Settings
from ..errors import ConfigError
from ..forks import at_fork
from ..urls import mask_url, nats_servers
from .sink import Reply

log = logging.getLogger("sqreen.spool")

# PubAcks awaited at once on the connection: enough to keep the server busy, bounded so that a
# batch of thousands does not queue thousands of requests behind a slow stream.
IN_FLIGHT = 256
# The stream the sink makes, when allowed to (SQREEN_SPOOL_NATS_CREATE_STREAM) and none takes
# the subject.
STREAM = "SQREEN_EVENTS"
# The subjects this process made a stream for: said once, whichever thread made it.
_created: set[str] = set()
_created_lock = threading.Lock()
# A failed connection is retried by the next delivery, not by nats-py in the background, while
# an established one that drops is reconnected by nats-py, with its pending PubAcks timing out.
RECONNECT_WAIT = 0.25
# The threads' loops and connections of a parent, left alone in a child after fork().
_inherited: list[object] = []


class Publisher:
    """Publishes batches into the stream that takes ``settings.nats_subject``, on the event loop
    that awaits it: the sink's private one, or the collector tier's (``collect --forward``)."""

    def __init__(self, settings: Settings, name: str) -> None:
        try:  # now, in the caller's thread (see Transport): not on the loop at first use
            import nats
            import nats.js.errors  # noqa: F401
        except ImportError:
            raise ConfigError(
                "SQREEN_URL names NATS servers, which needs nats-py: "
                "pip install 'sqreen-spool[nats]'"
            ) from None
        assert settings.url is not None
        servers = nats_servers(settings.url)
        self.url = mask_url(settings.url)  # each server's password masked
        self.subject = settings.nats_subject
        self._timeout = settings.http_timeout
        self._create = settings.nats_create_stream
        self._options: dict[str, Any] = {
            "servers": servers,
            "name": name,
            "connect_timeout": min(2.0, settings.http_timeout),
            "reconnect_time_wait": RECONNECT_WAIT,
            "max_reconnect_attempts": -1,
            "error_cb": _quiet,  # failures are counted and logged by the flusher, once
        }
        if settings.token:
            self._options["token"] = settings.token
        if settings.nats_credentials is not None:
            self._options["user_credentials"] = str(settings.nats_credentials)
        if any(urlsplit(server).scheme == "tls" for server in servers):
            self._options["tls"] = ssl.create_default_context()  # verified, like https
        self.client: Any = None
        self._warned_reports = False

    async def last(self, count: int) -> tuple[str, list[tuple[int, str, bytes]]]:
        """The stream taking this subject, and its last ``count`` messages (sequence, subject,
        body), oldest first: to read back what was delivered (``sqreen-spool tail``)."""
        js = await self._jetstream()
        stream = await js.find_stream_name_by_subject(self.subject)
        state = (await js.stream_info(stream)).state
        found = []
        for seq in range(max(state.first_seq, state.last_seq - count + 1), state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            found.append((seq, message.subject, bytes(message.data)))
        return stream, found

    async def publish(
        self,
        batch_id: str,
        ids: Sequence[str],
        payloads: Sequence[bytes],
        dropped: Mapping[str, int],
        budget: float,
    ) -> Reply:
        """Publish one batch within ``budget`` seconds; trouble becomes a Reply."""
        from nats.errors import Error as NatsError

        deadline = asyncio.get_running_loop().time() + budget
        try:
            js = await asyncio.wait_for(self._jetstream(), budget)
        except (TimeoutError, NatsError, OSError) as exc:
            return Reply(None, f"NATS: no connection ({describe(exc)})")
        if dropped:
            report = orjson.dumps({"batch_id": batch_id, "dropped": dropped})
            subject = f"{self.subject}.dropped"
            failure = await _one(js, subject, f"{batch_id}.dropped", report, batch_id, deadline)
            if failure is not None and failure[0] == "unacked":
                return Reply(None, failure[1])  # the server is in trouble: the events would be too
            if failure is not None:
                # No stream takes the report's subject (or refuses it): a configuration error,
                # which must not hold the events back. The drops stay counted in the spool.
                self._report_refused(subject, failure[1])
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def each(event_id: str, body: bytes) -> tuple[str, str] | None:
            async with gate:
                return await _one(js, self.subject, event_id, body, batch_id, deadline)

        outcomes = await asyncio.gather(*(each(i, p) for i, p in zip(ids, payloads, strict=True)))
        failures = {i: f for i, f in zip(ids, outcomes, strict=True) if f is not None}
        rejected = {i: why for i, (kind, why) in failures.items() if kind == "rejected"}
        if len(failures) == len(ids) and not rejected:
            return await self._unpublished(js, next(iter(failures.values())), deadline)
        unsettled = frozenset(i for i in failures if i not in rejected)
        return Reply(200, "", None, rejected, None, unsettled)

    def _report_refused(self, subject: str, why: str) -> None:
        if not self._warned_reports:
            self._warned_reports = True
            log.error(
                "sqreen spool: drop reports cannot be published on %r (%s): add the subject "
                "%r to the stream; the events are delivered, the drops stay counted in the "
                "spool (sqreen-spool inspect)",
                subject,
                why,
                f"{self.subject}.>",
            )

    async def close(self) -> None:
        """Close the connection, if one is open."""
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def _jetstream(self) -> Any:
        client = self.client
        if client is None or client.is_closed:
            client = _tls_enforcing_client()
            await client.connect(**self._options)
            self.client = client
        return client.jetstream(timeout=self._timeout)

    async def _unpublished(self, js: Any, failure: tuple[str, str], deadline: float) -> Reply:
        """The Reply for a batch none of whose messages was acknowledged."""
        kind, why = failure
        if kind != "no_stream":
            return Reply(None, why)
        from nats.js.errors import NotFoundError

        remaining = deadline - asyncio.get_running_loop().time()
        try:  # nothing answered: no stream takes the subject, or its leader is being elected
            await asyncio.wait_for(js.find_stream_name_by_subject(self.subject), remaining)
        except NotFoundError:
            if not self._create:
                return Reply(
                    404,
                    f"no JetStream stream takes subject {self.subject!r} (create one, or set "
                    "SQREEN_SPOOL_NATS_CREATE_STREAM=1)",
                    protocol="NATS",
                )
            subjects = [self.subject, f"{self.subject}.>"]
            await asyncio.wait_for(js.add_stream(name=STREAM, subjects=subjects), remaining)
            with _created_lock:  # two threads of a process may both find it missing: one says so
                first = self.subject not in _created
                _created.add(self.subject)
            if first:
                log.warning("sqreen spool: created JetStream stream %s for %s", STREAM, subjects)
            return Reply(None, f"created stream {STREAM}")  # retried at once
        except Exception as exc:
            return Reply(None, f"{why}; the stream did not answer ({describe(exc)})")
        return Reply(None, f"{why}; the stream exists (a leader election?)")


class JetStreamSink:
    """The flusher's sink: a :class:`Publisher` on a private event loop, in a thread of its own
    (started on first use, and again in a child after ``fork()``)."""

    def __init__(self, settings: Settings, user_agent: str) -> None:
        self._publisher = Publisher(settings, user_agent)
        self.url = self._publisher.url
        self._timeout = settings.http_timeout
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        at_fork(after_in_child=self._forget_parent)

    def post(
        self,
        batch_id: str,
        ids: Sequence[str],
        payloads: Sequence[bytes],
        dropped: Mapping[str, int],
        timeout: float | None = None,
    ) -> Reply:
        """Publish one batch within ``timeout`` seconds at most; trouble becomes a Reply."""
        budget = self._timeout if timeout is None else max(0.0, min(self._timeout, timeout))
        work = self._publisher.publish(batch_id, ids, payloads, dropped, budget)
        future = asyncio.run_coroutine_threadsafe(work, self._running_loop())
        try:
            return future.result(budget + 1.0)  # the coroutine keeps to budget by itself
        except concurrent.futures.TimeoutError:
            future.cancel()
            return Reply(None, f"timeout: no PubAcks within {budget:g} s")
        except Exception as exc:  # the sink's any other failure is this batch's, not the loop's
            log.warning("sqreen spool: publishing failed unexpectedly", exc_info=True)
            return Reply(None, type(exc).__name__)

    def close(self, timeout: float = 1.0) -> None:
        """Close the connection and stop the loop's thread, waiting at most ``timeout``."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._pid != os.getpid():
            return
        closing = asyncio.run_coroutine_threadsafe(self._wind_down(), loop)
        try:
            closing.result(timeout)
        except Exception:  # a server gone: the socket goes with the loop
            closing.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _wind_down(self) -> None:
        """Close the connection, then end nats-py's own tasks, so that none is left to be
        destroyed pending with the loop."""
        await self._publisher.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._starting:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                name = "sqreen-spool:nats"
                thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self._publisher.client = None  # a connection lives on the loop that made it
            return self._loop

    def _forget_parent(self) -> None:
        # The parent's loop has no thread here, and its socket is the parent's: neither is used
        # nor closed; the child's first delivery starts its own.
        _inherited.append((self._loop, self._publisher.client))
        self._loop = self._thread = self._publisher.client = None
        self._starting = threading.Lock()


async def _one(
    js: Any, subject: str, msg_id: str, body: bytes, batch_id: str, deadline: float
) -> tuple[str, str] | None:
    """Publish one message and wait for its PubAck: None once acknowledged, else the failure:
    ``("rejected", why)`` for good, ``("no_stream", why)``, or ``("unacked", why)``."""
    from nats.errors import Error as NatsError
    from nats.errors import MaxPayloadError, NoRespondersError
    from nats.js.errors import APIError, NoStreamResponseError

    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        return "unacked", "timeout: out of time before publishing"
    headers = {"Nats-Msg-Id": msg_id, "Sqreen-Batch-Id": batch_id}
    try:
        await js.publish(subject, body, timeout=remaining, headers=headers)
        return None
    except MaxPayloadError:
        return "rejected", f"NATS: {len(body)} bytes is over the server's max_payload"
    except (NoRespondersError, NoStreamResponseError):
        return "no_stream", f"NATS: no stream answered on {subject!r}"
    except APIError as exc:
        if exc.code == 400:  # the stream's own limits (max_msg_size): no retry will pass them
            return "rejected", f"JetStream refused it: {exc.description}"
        return "unacked", f"JetStream error {exc.code}: {exc.description}"
    except (TimeoutError, NatsError, OSError) as exc:
        return "unacked", f"NATS: {describe(exc)}"


def _tls_enforcing_client() -> Any:
    """A nats-py client that keeps ``tls://`` to its word.

    nats-py upgrades a connection to TLS only when the server's INFO asks for it: against a
    plaintext server (a spoofed one, or one misconfigured) it would send the CONNECT, token or
    password included, in clear. This client refuses such a server before sending anything.
    The INFO is the only moment to do it, and nats-py offers no hook there but this method.
    """
    from nats.aio.client import Client
    from nats.errors import Error as NatsError

    class TlsEnforcingClient(Client):
        async def _process_info(
            self, info: dict[str, Any], initial_connection: bool = False
        ) -> None:
            server = self._current_server
            tls = server is not None and server.uri.scheme == "tls"
            if initial_connection and tls and not info.get("tls_required"):
                assert server is not None
                raise NatsError(
                    f"{server.uri.hostname}:{server.uri.port} does not require TLS; "
                    "refusing to connect in clear to a tls:// server"
                )
            await super()._process_info(info, initial_connection)

    return TlsEnforcingClient()


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: its default logs every failed reconnect at ERROR."""
