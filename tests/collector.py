"""A real HTTP collector on 127.0.0.1 (port 0) for the tests, scriptable per request.

Behaviours are functions of the decoded batch returning what to do; ``respond_with`` queues them
for the next requests, after which the default (accept) applies. The whole response is written
in one send: header and body in two sends would stall every keep-alive request by ~40 ms (Nagle
and delayed ACK), and the tests would measure the collector, not the flusher.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # sleep this long before answering
    reset: bool = False  # drop the connection with a TCP reset instead of answering


Behaviour = Callable[[dict[str, Any]], Answer]


def accept(rejected: Iterable[str] = (), reason: str = "refused by test") -> Behaviour:
    def behaviour(batch: dict[str, Any]) -> Answer:
        ids = {e["id"] for e in batch["events"]} & set(rejected)
        if not ids:
            return Answer(200)
        return Answer(200, orjson.dumps({"rejected": [{"id": i, "reason": reason} for i in ids]}))

    return behaviour


def status(code: int, **headers: str) -> Behaviour:
    return lambda batch: Answer(code, b'{"error": "scripted"}', dict(headers))


def hang(seconds: float) -> Behaviour:
    return lambda batch: Answer(200, hang=seconds)


def reset() -> Behaviour:
    return lambda batch: Answer(reset=True)


def bad_ids(ids: Iterable[str], code: int = 400) -> Behaviour:
    """Answer ``code`` to any batch holding one of ``ids``, accept the others."""
    wanted = set(ids)

    def behaviour(batch: dict[str, Any]) -> Answer:
        if any(e["id"] in wanted for e in batch["events"]):
            return Answer(code, b'{"error": "bad event"}')
        return Answer(200)

    return behaviour


def larger_than(limit: int, code: int = 413) -> Behaviour:
    return lambda batch: Answer(code) if len(batch["events"]) > limit else Answer(200)


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    batch: dict[str, Any]
    answer: Answer


class Collector:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: list[Behaviour] = []
        self.default: Behaviour = accept()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/events"

    def start(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = (
                    gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                )
                batch = orjson.loads(body)
                answer = collector._next()(batch)
                with collector._lock:
                    collector.requests.append(Request(dict(self.headers), body, batch, answer))
                if answer.hang:
                    time.sleep(answer.hang)
                if answer.reset:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    return
                head = (
                    f"HTTP/1.1 {answer.status} Scripted\r\nContent-Length: {len(answer.body)}\r\n"
                )
                head += "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
                self.wfile.write(head.encode() + b"\r\n" + answer.body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        """Stop listening: connections are refused until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def respond_with(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def _next(self) -> Behaviour:
        with self._lock:
            return self._script.pop(0) if self._script else self.default

    def received_events(self) -> list[dict[str, Any]]:
        """Events of every batch the collector processed with a 2xx, including answers the
        client no longer waited for: what a real collector would have stored."""
        return [
            e
            for r in self.requests
            if not r.answer.reset and 200 <= r.answer.status < 300
            for e in r.batch["events"]
        ]

    def accepted_events(self) -> list[dict[str, Any]]:
        """Events the collector acknowledged (2xx and not named as rejected), in arrival order."""
        events = []
        for request in self.requests:
            answer = request.answer
            if answer.reset or answer.hang or not 200 <= answer.status < 300:
                continue
            refused = {r["id"] for r in orjson.loads(answer.body or b"{}").get("rejected", [])}
            events += [e for e in request.batch["events"] if e["id"] not in refused]
        return events
