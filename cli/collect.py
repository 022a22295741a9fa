"""``sqreen-spool collect``: the reference collector, or with ``--forward`` the collector tier
that forwards into NATS JetStream (:mod:`sqreen.cli.forward`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
import typer

from sqreen.automation.playbooks import Playbooks
from sqreen.collector.ingest import Ingest
from sqreen.collector.store import EventStore
from sqreen.config import parse_duration, parse_size
from sqreen.errors import SpoolError, UnsafeSpool
from sqreen.storage.files import open_ours
from sqreen.urls import is_nats, mask_url, parse_url

from .common import USAGE, fail, plain, required_token
from .playbook import decoded, read_or_exit, shorthand
from .reference import Receiver, ReferenceCollector


def _received_id(line: bytes, out: Path, number: int) -> str:
    """The event id of one line of ``--out``; exit with one line if it is not one."""
    try:
        event_id = orjson.loads(line)["id"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        event_id = None
    if not isinstance(event_id, str):
        fail(f"--out {out}: line {number} is not an event received earlier (JSON with an id)")
    return event_id


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def _workers(
    host: str, port: int, workers: int, store: Path, limits: tuple[float, int],
    spec: dict[str, Any] | None, out: Path | None, token: str | None,
    ui: dict[str, Any] | None,
) -> None:  # fmt: skip
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        fail("--workers needs uvicorn: pip install 'sqreen-spool[collector]'", USAGE)
    from .workers import serve

    _ingest(store, None, limits).close()  # made (or refused) once, here, not in every worker
    print(f"listening on http://{host}:{port}/, keeping events in {store}", flush=True)
    if ui is not None:
        print(f"the Event Explorer: http://{host}:{port}/ui/", flush=True)
    serve(host, port, workers, store, limits, spec, out, token, ui)


def _forward(
    url: str,
    host: str,
    port: int,
    workers: int,
    spec: dict[str, Any] | None,
    out: Path | None,
    token: str | None,
) -> None:
    if out is not None:
        fail("--forward keeps nothing on disk: it takes no --out or --store", USAGE)
    try:
        import nats  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        fail("--forward needs uvicorn and nats-py: pip install 'sqreen-spool[collector]'", USAGE)
    from .forward import serve

    try:
        if not is_nats(parse_url(url) or ""):
            raise ValueError("expected nats:// or tls:// URLs")
    except ValueError as exc:
        fail(f"--forward {url}: {exc}", USAGE)
    print(f"listening on http://{host}:{port}/, forwarding into {mask_url(url)}", flush=True)
    serve(url, host, port, workers, spec, token)


def collect(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free).")] = 8750,
    out: Annotated[
        Path | None, typer.Option(help="Append each new event to this file as a JSON line.")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(help="Keep every event, and the playbooks' state, in this event store."),
    ] = None,
    store_max_age: Annotated[
        str, typer.Option(help="Drop stored events older than this (30d, 12h).")
    ] = "30d",
    store_max_size: Annotated[
        str, typer.Option(help="Drop the oldest stored events past this size (1GiB, 500MB).")
    ] = "1GiB",
    playbooks: Annotated[
        Path | None, typer.Option(help="Run the playbooks of this file (TOML) on what comes in.")
    ] = None,
    block_after: Annotated[
        int | None,
        typer.Option(min=1, help="Block a user after this many failed logins in --window."),
    ] = None,
    block_ip_after: Annotated[
        int | None,
        typer.Option(min=1, help="Block a client IP after this many failed logins in --window."),
    ] = None,
    window: Annotated[str, typer.Option(help="The shorthands' window (30s, 10m, 1h).")] = "10m",
    block_for: Annotated[
        str, typer.Option(help="How long a shorthand's block lasts (10m, 1h; 0: until removed).")
    ] = "1h",
    forward: Annotated[
        str | None,
        typer.Option(
            help="Forward every event into NATS JetStream (nats://host:4222,...) under uvicorn: "
            "a stateless collector tier."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Worker processes (under uvicorn; with --forward or --store)."),
    ] = 1,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SQREEN_COLLECT_TOKEN",
            show_envvar=True,
            help="Require 'Authorization: Bearer TOKEN' on every request (needed with a --host "
            "beyond loopback).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Read the token from this file (its first line).")
    ] = None,
    ui: Annotated[
        bool, typer.Option("--ui", help="Serve the Event Explorer under /ui (needs --store).")
    ] = False,
    ui_token: Annotated[
        str | None,
        typer.Option(
            envvar="SQREEN_UI_TOKEN",
            show_envvar=True,
            help="The Event Explorer's token (needed with a --host beyond loopback).",
        ),
    ] = None,
    ui_token_file: Annotated[
        Path | None, typer.Option(help="Read the explorer's token from this file.")
    ] = None,
) -> None:
    """Run a local reference collector: print each event received, deduplicated by id.

    It accepts the documented wire format (gzip included) POSTed to any path, answers 400 with
    a reason to malformed batches and rejects invalid events one by one. With --store, it keeps
    every event in an event store (durable before its answer, shared by --workers). With
    --playbooks (or the shorthands --block-after, --block-ip-after), playbooks decide security
    responses, which its answers carry to the applications.

    With --forward, it keeps nothing: each batch is answered 2xx once the stream acknowledged
    its events, 503 when it did not (a playbook's state is then per worker process).
    """
    token = required_token(token, token_file, host, "--token", "SQREEN_COLLECT_TOKEN")
    try:
        limits = (parse_duration(store_max_age), parse_size(store_max_size))
    except ValueError as exc:
        fail(f"--store-max-age, --store-max-size: {exc}", USAGE)
    spec = _spec(playbooks, block_after, block_ip_after, window, block_for)
    book = None if spec is None else read_or_exit(spec)
    if forward is not None:
        _forward(forward, host, port, workers, spec, store or out, token)
        return
    if book is not None and store is None:
        # The playbooks' state needs a store: beside --out (a restart keeps its actions), else
        # a private one for this run.
        store = out.with_name(out.name + ".store") if out is not None else None
    explorer = None
    if ui:
        if store is None:
            fail("--ui needs --store: the Event Explorer shows what the store keeps", USAGE)
        explorer = {
            "token": required_token(ui_token, ui_token_file, host, "--ui-token", "SQREEN_UI_TOKEN"),
            "playbooks": None if playbooks is None else playbooks.read_text(encoding="utf-8"),
        }
    if workers > 1 or explorer is not None:
        if store is None:
            fail("--workers needs --store (the workers share it) or --forward", USAGE)
        _workers(host, port, workers, store, limits, spec, out, token, explorer)
        return
    with contextlib.ExitStack() as resources:
        if book is not None and store is None:
            scratch = resources.enter_context(tempfile.TemporaryDirectory(prefix="sqreen-"))
            store = Path(scratch) / "collector.store"
        ingest = None if store is None else _ingest(store, book, limits)
        if ingest is not None:
            resources.callback(ingest.close)
        sink, seen = opened_out(out)
        if sink is not None:
            resources.callback(sink.close)
        _serve(ReferenceCollector(printer(sink), seen, ingest), host, port, token)


def _spec(
    playbooks: Path | None, block_after: int | None, block_ip_after: int | None, window: str,
    block_for: str,
) -> dict[str, Any] | None:  # fmt: skip
    """The playbook file to run, decoded: --playbooks, or the one the shorthands stand for."""
    if block_after is None and block_ip_after is None:
        return None if playbooks is None else decoded(playbooks)
    if playbooks is not None:
        fail("--playbooks and the shorthands (--block-after, --block-ip-after) exclude each "
             "other", USAGE)  # fmt: skip
    return shorthand(block_after, block_ip_after, window, block_for)


def _ingest(store: Path, playbooks: Playbooks | None, limits: tuple[float, int]) -> Ingest:
    try:
        return Ingest(EventStore(store, *limits), playbooks)
    except (SpoolError, OSError, sqlite3.Error) as exc:
        fail(f"--store {store}: {getattr(exc, 'strerror', None) or exc}", USAGE)


def opened_out(out: Path | None) -> tuple[BinaryIO | None, list[str]]:
    """``--out`` opened for appending, and the ids it already holds; one line on trouble."""
    if out is None:
        return None, []
    seen: list[str] = []
    try:
        # Made 0600 (it holds emails and IPs), and never through a link or another's file.
        sink = os.fdopen(open_ours(str(out), _APPEND), "ab")
        with out.open("rb") as previous:
            for number, line in enumerate(previous, 1):
                if line.strip():
                    seen.append(_received_id(line, out, number))
    except (OSError, UnsafeSpool) as exc:  # a directory, no permission, a link, ...
        fail(f"--out {out}: {getattr(exc, 'strerror', None) or exc}", USAGE)
    return sink, seen


def printer(sink: BinaryIO | None) -> Callable[[dict[str, Any]], None]:
    """Print each new event on a line, and append it to ``--out``."""

    def received(event: dict[str, Any]) -> None:
        properties = orjson.dumps(event.get("properties", {})).decode()
        line = f"{event['timestamp']}  {event['name']}  {event['id']}  {properties}"
        print(plain(line), flush=True)
        if sink is not None:
            sink.write(orjson.dumps(event) + b"\n")
            sink.flush()

    return received


def _serve(collector: ReferenceCollector, host: str, port: int, token: str | None) -> None:
    """Serve until SIGTERM or Ctrl-C, then say what was received."""
    receiver = Receiver(collector, host, port, token)
    try:
        receiver.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    print(f"listening on {receiver.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(0.5):
            pass
    receiver.stop()
    print(
        f"received {collector.events} events in {collector.batches} batches "
        f"({collector.duplicates} duplicates, {collector.rejected} rejected)",
        flush=True,
    )
