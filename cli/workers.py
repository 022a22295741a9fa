"""``sqreen-spool collect --store FILE --workers N``: the reference collector in N processes
under uvicorn, sharing one event store (each batch one transaction: the playbooks decide once,
whichever worker a batch reaches)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson

from sqreen.automation.playbooks import read
from sqreen.collector.ingest import Ingest
from sqreen.collector.store import EventStore

from .asgi import TOKEN_VARIABLE, BatchApp, Result, playbooks_from_environment, run
from .collect import opened_out, printer
from .reference import Received, ReferenceCollector

STORE_VARIABLE = "SQREEN_COLLECT_STORE"
LIMITS_VARIABLE = "SQREEN_COLLECT_STORE_LIMITS"  # max age (s) and max size (bytes)
OUT_VARIABLE = "SQREEN_COLLECT_OUT"


class StoreApp(BatchApp):
    """The reference collector's handler, one batch at a time in a thread: SQLite's calls
    block, and a worker's loop must go on accepting connections meanwhile."""

    def __init__(self, collector: ReferenceCollector, token: str | None) -> None:
        super().__init__(token)
        self._collector = collector

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
    return StoreApp(ReferenceCollector(printer(sink), (), ingest), os.environ.get(TOKEN_VARIABLE))


def serve(
    host: str, port: int, workers: int, store: Path, limits: tuple[float, int], spec: Any,
    out: Path | None, token: str | None,
) -> None:  # fmt: skip
    """Serve the collector's workers under uvicorn until stopped (SIGTERM, Ctrl-C)."""
    os.environ[STORE_VARIABLE] = str(store.resolve())
    os.environ[LIMITS_VARIABLE] = orjson.dumps(limits).decode()
    if out is not None:
        os.environ[OUT_VARIABLE] = str(out.resolve())
    run("sqreen.cli.workers:create_app", host, port, workers, spec, token)
