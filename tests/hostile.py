"""A hostile collector on 127.0.0.1: a raw socket server whose answers the test scripts byte by
byte (bad gzip, endless chunked bodies, huge bodies), for what an HTTP server library would
never send. Each connection's request is read whole, then the next scripted answer is played.
And hostile clients of our own collectors: compression bombs of parsed size, slowloris.
"""

from __future__ import annotations

import functools
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx

Answer = Callable[[socket.socket], None]


def raw(data: bytes) -> Answer:
    """Send ``data`` as the whole answer."""
    return lambda conn: conn.sendall(data)


def response(status: int, body: bytes = b"", **headers: str) -> Answer:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def endless_chunked(chunk: bytes = b"x" * 65536, seconds: float = 10.0) -> Answer:
    """A 2xx whose chunked body goes on until the client hangs up (or ``seconds`` pass)."""

    def play(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.sendall(frame)

    return play


def trickle(head: bytes, seconds: float = 20.0) -> Answer:
    """Send ``head``, then one more byte a second, in the headers, until ``seconds`` pass."""

    def play(conn: socket.socket) -> None:
        conn.sendall(head)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.sendall(b"a")
            time.sleep(1)

    return play


class HostileCollector:
    def __init__(self, default: Answer) -> None:
        self.default = default
        self.script: list[Answer] = []
        self.requests = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}/v1/events"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                for _ in self._requests(conn):
                    self.requests += 1
                    play = self.script.pop(0) if self.script else self.default
                    play(conn)
            except OSError:
                pass  # the client hung up: what a hostile answer often makes it do

    @staticmethod
    def _requests(conn: socket.socket) -> Iterator[bytes]:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            body, buffer = buffer[:length], buffer[length:]
            yield body

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()


@functools.cache
def empty_objects() -> bytes:
    """About 16 KiB on the wire that inflate to 16 MiB (under a collector's body limit) of
    empty objects: it parsed into half a GiB."""
    return gzip.compress(b'{"events": [' + b"{}," * 5_500_000 + b"{}]}", 9)


def slow_clients(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request's headers and then nothing (slowloris);
    those the server refused at once are left out."""
    address = httpx.URL(url)
    opened = []
    for _ in range(count):
        try:
            conn = socket.create_connection((address.host, address.port), timeout=5)
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nX-Slow: ")
        except OSError:
            continue
        opened.append(conn)
    return opened


def cut_by_server(connections: list[socket.socket], seconds: float) -> int:
    """How many of the connections the server closed within ``seconds`` (each then closed)."""
    closed = 0
    deadline = time.monotonic() + seconds
    for conn in connections:
        try:
            while True:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                if conn.recv(4096) == b"":
                    closed += 1
                    break
        except TimeoutError:
            pass
        except OSError:  # reset
            closed += 1
        finally:
            conn.close()
    return closed
