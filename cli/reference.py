"""The reference collector behind ``sqreen-spool collect``, and the server the tests script.

:class:`Receiver` is the HTTP part: it reads each POST (any path), undoes gzip, parses the JSON
and answers whatever its handler says. :class:`ReferenceCollector` is the handler that checks
the documented wire format, deduplicates by event id and hands each new event on.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from sqreen.collector.ingest import Ingest
from sqreen.wire import (
    MAX_BODY,
    TooLarge,
    add_actions,
    check_batch,
    decode,
    parse_batch,
    room_for_actions,
)


@dataclass
class Answer:
    """A response: status, JSON body, headers; or, for tests of failure handling, an answer
    sent only after ``delay`` seconds, or a TCP reset instead of an answer."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


@dataclass
class Received:
    """One POST: its headers, its decoded body, and the batch (None if the body is not JSON)."""

    path: str
    headers: dict[str, str]
    body: bytes
    batch: Any


Handler = Callable[[Received], Answer]


def error(status: int, reason: str) -> Answer:
    return Answer(status, orjson.dumps({"error": reason}))


class Receiver:
    """An HTTP server on ``host:port`` (0: any free port) answering POSTs with ``handler``."""

    def __init__(
        self, handler: Handler, host: str = "127.0.0.1", port: int = 0, token: str | None = None
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.token = token
        # Bodies decoded and parsed at once: each may cost tens of MiB for a moment.
        self.parsing = threading.BoundedSemaphore(MAX_PARSING)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Listen (again) on the same port, serving from a daemon thread."""
        server = _BoundedServer((self.host, self.port), self._request_class())
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="collector", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _request_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT

            def do_POST(self) -> None:
                if not authorized(receiver.token, self.headers.get("Authorization")):
                    self.close_connection = True  # the body is not read: nothing else is
                    self._answer(error(401, "a valid token is required (Authorization: Bearer)"))
                    return
                try:
                    length = int(self.headers.get("Content-Length", 0))
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    self.close_connection = True  # the body is not read: nothing else is
                    self._answer(error(413, f"a body must be 0 to {MAX_BODY} bytes"))
                    return
                raw = self.rfile.read(length)
                self._watchdog.cancel()  # read whole: what follows is the collector's time
                headers = dict(self.headers)
                if not receiver.parsing.acquire(timeout=PARSING_WAIT):
                    self._answer(Answer(503, b'{"error": "busy"}', {"Retry-After": "1"}))
                    return
                try:
                    body = decode(self.headers.get("Content-Encoding"), raw)
                    batch = parse_batch(body)
                except TooLarge as exc:
                    self._answer(error(413, str(exc)))
                    return
                except ValueError as exc:
                    self._answer(error(400, str(exc)))
                    return
                finally:
                    receiver.parsing.release()
                self._answer(receiver.handler(Received(self.path, headers, body, batch)))

            def handle_one_request(self) -> None:
                # A client has READ_DEADLINE seconds to send a whole request (line, headers,
                # body) from when the connection becomes free for one: a trickle (slowloris)
                # is cut, not waited for. Each read also times out after IDLE_TIMEOUT.
                self._watchdog = threading.Timer(READ_DEADLINE, self._cut)
                self._watchdog.daemon = True
                self._watchdog.start()
                try:
                    super().handle_one_request()
                finally:
                    self._watchdog.cancel()

            def _cut(self) -> None:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def do_GET(self) -> None:
                self._answer(error(405, "POST batches to this URL"))

            def _answer(self, answer: Answer) -> None:
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.reset:
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.connection.close()
                    return
                head = f"HTTP/1.1 {answer.status} {self.responses.get(answer.status, ('',))[0]}"
                head += f"\r\nContent-Type: application/json\r\nContent-Length: {len(answer.body)}"
                head += "".join(f"\r\n{k}: {v}" for k, v in answer.headers.items())
                # One send: header and body in two would stall each keep-alive request by about
                # 40 ms (Nagle's algorithm against the client's delayed ACK).
                self.wfile.write(head.encode() + b"\r\n\r\n" + answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Request


# The threaded collector: connections served at once (more are closed at once), bodies parsed
# at once (more wait PARSING_WAIT s, then get 503), how long a read may wait for a byte, and
# how long a whole request may take to arrive.
MAX_CONNECTIONS = 128
MAX_PARSING = 4
PARSING_WAIT = 5.0
IDLE_TIMEOUT = 10.0
READ_DEADLINE = 15.0


class _BoundedServer(ThreadingHTTPServer):
    """Serves at most MAX_CONNECTIONS connections at once, each on its own thread; one more is
    closed as soon as it is accepted, so that idle or trickling clients cannot take every
    thread the host has."""

    daemon_threads = True
    # Connections waiting to be accepted: with the default 5, a burst of clients waits in the
    # kernel's SYN retries (seconds) instead of being served or closed at once.
    request_queue_size = MAX_CONNECTIONS

    def __init__(self, *args: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def authorized(token: str | None, header: str | None) -> bool:
    """Whether a request may post: no token is set, or it sends ``Bearer <token>``
    (compared in constant time)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


class ReferenceCollector:
    """Accepts valid batches, rejects invalid events by id, and passes each event it has not
    seen before to ``on_event``. Without an ``ingest``, it remembers ids in memory (``seen``
    preloads those received earlier, from ``--out``); with one, its event store keeps every
    event (deduplicated there, across workers and restarts) and its playbooks decide: each
    answer then carries the actions in force and the event names they watch (``urgent``)."""

    def __init__(
        self,
        on_event: Callable[[dict[str, Any]], None],
        seen: Iterable[str] = (),
        ingest: Ingest | None = None,
    ):
        self._on_event = on_event
        self._seen = set(seen)
        self.ingest = ingest
        self._lock = threading.Lock()
        self.batches = self.events = self.duplicates = self.rejected = 0

    def __call__(self, received: Received) -> Answer:
        problem, rejected = check_batch(received.batch)
        if problem is not None:
            return error(400, problem)
        accepted = [e for e in received.batch["events"] if e["id"] not in rejected]
        answer: dict[str, Any] = {}
        new: Sequence[Mapping[str, Any]]
        if rejected:
            answer["rejected"] = [{"id": i, "reason": why} for i, why in rejected.items()]
        if self.ingest is None:
            new = self._remembered(accepted)
        else:
            answer["urgent"] = self.ingest.urgent
            try:
                taken = self.ingest.take(accepted, room_for_actions(answer))
            except (sqlite3.Error, OSError) as exc:  # the events are not kept: the app retries
                return Answer(503, orjson.dumps({"error": f"the store failed: {exc}"}),
                              {"Retry-After": "1"})  # fmt: skip
            new = taken.new
            add_actions(answer, taken.actions, taken.omitted)
        with self._lock:
            self.batches += 1
            self.events += len(new)
            self.duplicates += len(accepted) - len(new)
            self.rejected += len(rejected)
            for event in new:
                self._on_event(dict(event))
        answer |= {"accepted": len(new), "duplicates": len(accepted) - len(new)}
        return Answer(200, orjson.dumps(answer))

    def _remembered(self, accepted: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._lock:
            new = []
            for event in accepted:  # an id repeated within the batch is new only once
                if event["id"] not in self._seen:
                    self._seen.add(event["id"])
                    new.append(event)
        return new
