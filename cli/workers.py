"""``sqreen-spool collect --store FILE --workers N``: the reference collector in N processes
under uvicorn, sharing one event store (each batch one transaction: the playbooks decide once,
whichever worker a batch reaches)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson

from sqreen.asgi import Receive, Scope, Send
from sqreen.automation.playbooks import read
from sqreen.collector.ingest import Ingest
from sqreen.collector.store import EventStore

from .asgi import TOKEN_VARIABLE, BatchApp, Result, playbooks_from_environment, run
from .collect import opened_out, printer
from .reference import Received, ReferenceCollector

STORE_VARIABLE = "SQREEN_COLLECT_STORE"
LIMITS_VARIABLE = "SQREEN_COLLECT_STORE_LIMITS"  # max age (s) and max size (bytes)
OUT_VARIABLE = "SQREEN_COLLECT_OUT"
UI_VARIABLE = "SQREEN_COLLECT_UI"  # the explorer's token and playbook text, with --ui


class StoreApp(BatchApp):
    """The reference collector's handler, one batch at a time in a thread: SQLite's calls
    block, and a worker's loop must go on accepting connections meanwhile."""

    def __init__(
        self, collector: ReferenceCollector, token: str | None, explorer: Any = None
    ) -> None:
        super().__init__(token)
        self._collector = collector
        self._explorer = explorer  # the Event Explorer under /ui, with --ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self._explorer is not None and (path == "/ui" or path.startswith("/ui/")):
            await self._explorer(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def handle(self, batch: Any, headers: dict[str, str], path: str) -> Result:
        received = Received(path, headers, b"", batch)
        answer = await asyncio.to_thread(self._collector, received)
        return answer.status, answer.body, list(_headers(answer.headers))

    async def shutdown(self) -> None:
        if self._collector.ingest is not None:
            self._collector.ingest.close()


def _headers(headers: dict[str, str]) -> Any:
    return ((k.lower().encode(), v.encode()) for k, v in headers.items())


def create_app() -> StoreApp:
    """The app of one worker process, from what :func:`serve` put in the environment."""
    spec = playbooks_from_environment()
    age, size = orjson.loads(os.environ[LIMITS_VARIABLE])
    store = EventStore(Path(os.environ[STORE_VARIABLE]), age, size)
    ingest = Ingest(store, None if spec is None else read(spec))
    out = os.environ.get(OUT_VARIABLE)
    sink, _ = opened_out(Path(out) if out else None)
    explorer = None
    if UI_VARIABLE in os.environ:
        from sqreen.explorer.app import Explorer

        ui = orjson.loads(os.environ[UI_VARIABLE])
        explorer = Explorer(store.path, ui["token"], ui["playbooks"], writer=store)
    collector = ReferenceCollector(printer(sink), (), ingest)
    return StoreApp(collector, os.environ.get(TOKEN_VARIABLE), explorer)


def serve(
    host: str, port: int, workers: int, store: Path, limits: tuple[float, int], spec: Any,
    out: Path | None, token: str | None, ui: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Serve the collector's workers under uvicorn until stopped (SIGTERM, Ctrl-C); with
    ``ui`` (its token and playbook file's text), the Event Explorer under /ui too."""
    if ui is not None:
        os.environ[UI_VARIABLE] = orjson.dumps(ui).decode()
    os.environ[STORE_VARIABLE] = str(store.resolve())
    os.environ[LIMITS_VARIABLE] = orjson.dumps(limits).decode()
    if out is not None:
        os.environ[OUT_VARIABLE] = str(out.resolve())
    run("sqreen.cli.workers:create_app", host, port, workers, spec, token)
