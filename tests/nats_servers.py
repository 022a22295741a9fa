"""Real ``nats-server -js`` processes on loopback for the JetStream tests and bench, each on free
ports with its own storage directory; ``collect --forward`` processes in front of them; and a
JetStream client to set streams up and read them back."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")
CLI = str(Path(sys.executable).parent / "sqreen-spool")
SUBJECT = "sqreen.events"
STREAM = "SQREEN_EVENTS"  # the name the sink gives a stream it creates


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
    assert found, "nats-server is missing: `make test` installs Debian's nats-server package"
    return found


class NatsServer:
    """One server; ``routes`` makes it a member of a cluster."""

    def __init__(
        self, root: Path, name: str = "n1", cluster_port: int = 0, routes: tuple[int, ...] = ()
    ) -> None:
        self.name = name
        self.port = free_port()
        self.store = root / f"js-{name}"
        self.cluster_port, self.routes = cluster_port, routes
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        command = [binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        command += ["-n", self.name]
        if self.cluster_port:
            command += ["--cluster_name", "spool", "--cluster"]
            command += [f"nats://127.0.0.1:{self.cluster_port}", "--routes"]
            command += [",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nats-server did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


class Collector:
    """One ``collect --forward`` process on a free port."""

    def __init__(self, forward: str, *options: str) -> None:
        self.port = free_port()
        command = [CLI, "collect", "--forward", forward, "--port", str(self.port), *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.communicate()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the collector did not start listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=30)


def run(url: str, work: Callable[[Any], Awaitable[T]], timeout: float = 30) -> T:
    """``work(js)`` on a JetStream context of a fresh connection to ``url``."""
    import nats

    async def main() -> T:
        client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=5)
        try:
            return await asyncio.wait_for(work(client.jetstream(timeout=10)), timeout)
        finally:
            await client.close()

    return asyncio.run(main())


def add_stream(
    url: str,
    replicas: int = 1,
    subjects: tuple[str, ...] = (SUBJECT, f"{SUBJECT}.>"),
    **config: Any,
) -> None:
    async def add(js: Any) -> None:
        from nats.js.api import StreamConfig

        await js.add_stream(
            StreamConfig(name=STREAM, subjects=list(subjects), num_replicas=replicas, **config)
        )

    run(url, add)


def stream_leader(url: str) -> str:
    """The name of the server leading the stream (in a cluster)."""

    async def ask(js: Any) -> str:
        info = await js.stream_info(STREAM)
        return str(info.cluster.leader)

    return run(url, ask)


def stream_messages(url: str) -> list[tuple[dict[str, str], bytes]]:
    """Every message of the stream, in order: (headers, body)."""

    async def read(js: Any) -> list[tuple[dict[str, str], bytes]]:
        info = await js.stream_info(STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(STREAM, seq)
            out.append((dict(message.headers or {}), bytes(message.data)))
        return out

    return run(url, read, timeout=120)


def events_in(messages: list[tuple[dict[str, str], bytes]]) -> list[dict[str, Any]]:
    """The events among a stream's messages (not the drop reports), decoded."""
    return [
        orjson.loads(body)
        for headers, body in messages
        if not headers.get("Nats-Msg-Id", "").endswith(".dropped")
    ]
