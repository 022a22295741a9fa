"""A hostile collector (a raw socket server on loopback) never stops delivery, hangs it or
exhausts memory: every failure of one delivery is a counted, backed-off failure of its batch."""

from __future__ import annotations

import gzip
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import sqreen
from sqreen.cli.app import app
from sqreen.cli.reference import Answer
from sqreen.delivery.http import RETRY_AFTER_MAX, retry_after
from sqreen.worker import Worker

from . import hostile
from .conftest import counters, run_child

NOT_GZIP = hostile.response(200, b"this is not gzip", Content_Encoding="gzip")


@pytest.fixture
def server() -> Iterator[hostile.HostileCollector]:
    collector = hostile.HostileCollector(hostile.response(200))
    yield collector
    collector.stop()


def tracked(path: Path, n: int = 3) -> None:
    spooler = sqreen.Spooler(path=path)
    for i in range(n):
        assert spooler.track("hostile", {"properties": {"i": i}})
    spooler.close()


@pytest.mark.slow
def test_a_2xx_whose_body_does_not_decode_is_a_failure_of_its_batch(
    spool_path: Path, server: hostile.HostileCollector
) -> None:
    server.default = NOT_GZIP
    tracked(spool_path)
    spooler = sqreen.Spooler(path=spool_path, url=server.url)
    result = spooler.flush(timeout=10)  # raised httpx.DecodingError before
    assert (result.delivered, result.failed, result.pending) == (0, 3, 3)
    assert spooler.health().failures == {"collector_unavailable": 1}
    server.default = hostile.response(200)
    assert spooler.flush(timeout=10).delivered == 3
    spooler.close()


@pytest.mark.slow
def test_the_cli_flush_reports_a_bad_answer_in_one_line(
    spool_path: Path, server: hostile.HostileCollector
) -> None:
    server.default = NOT_GZIP
    tracked(spool_path)
    result = CliRunner().invoke(app, ["--path", str(spool_path), "--url", server.url, "flush"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_exit_flush_survives_a_bad_answer(
    spool_path: Path, server: hostile.HostileCollector
) -> None:
    server.default = NOT_GZIP
    child = run_child(
        "track_and_exit", str(spool_path), server.url, "5", "3", stderr=subprocess.PIPE
    )
    _, errors = child.communicate(timeout=30)
    assert child.returncode == 0
    assert b"Traceback" not in errors
    assert server.requests >= 1


def test_the_background_thread_outlives_any_failure_and_keeps_its_schedule() -> None:
    runs: list[float] = []
    again = threading.Event()

    def work() -> float:
        runs.append(time.monotonic())
        if len(runs) == 2:
            raise RuntimeError("a bug in one run")
        if len(runs) >= 4:
            again.set()
        return 0.05

    worker = Worker("test", work)
    worker.start()
    assert again.wait(5), f"the worker stopped after a failure ({len(runs)} runs)"
    worker.stop(1)


@pytest.mark.parametrize("value", ["999999999", "Fri, 31 Dec 9999 23:59:59 GMT", "1e400", "nan"])
def test_retry_after_is_capped(
    spool_path: Path, server: hostile.HostileCollector, value: str
) -> None:
    parsed = retry_after(value)
    assert parsed is None or 0 <= parsed <= RETRY_AFTER_MAX
    server.default = hostile.response(503, Retry_After=value)
    tracked(spool_path, 1)
    spooler = sqreen.Spooler(path=spool_path, url=server.url, retry_attempts=1)
    assert spooler.flush(timeout=10).failed == 1
    spooler.close()
    result = CliRunner().invoke(app, ["--path", str(spool_path), "inspect", "events", "--json"])
    assert result.exit_code == 0, result.output
    (event,) = [orjson.loads(line) for line in result.stdout.splitlines()]
    # The row's backoff: at least its first step, never past the cap (and its jitter).
    waits = datetime.fromisoformat(event["next_attempt_at"]).timestamp() - time.time()
    assert 0 < waits <= RETRY_AFTER_MAX * 1.2


@pytest.mark.slow
@pytest.mark.parametrize(
    "answer",
    [
        hostile.endless_chunked(),
        hostile.response(200, b'{"rejected": [' + b'{"id": "bogus"},' * 3_000_000 + b"{}]}"),
        hostile.response(
            200, gzip.compress(b" " * (200 * 1024 * 1024), 9), Content_Encoding="gzip"
        ),
    ],
    ids=["endless-chunked", "huge-rejected-list", "gzip-bomb"],
)
def test_an_answer_body_costs_bounded_memory(
    spool_path: Path, server: hostile.HostileCollector, answer: hostile.Answer
) -> None:
    server.default = answer
    tracked(spool_path)
    started = time.monotonic()
    child = run_child("flush_once", str(spool_path), server.url, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    delivered, failed, peak_mib = (int(x) for x in out.split())
    assert (delivered, failed) == (0, 3)  # an answer not read whole settles nothing
    assert peak_mib < 150, f"{peak_mib} MiB"
    assert time.monotonic() - started < 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nX-Slow: ", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"],
    ids=["in-the-headers", "in-the-body"],
)
def test_a_trickling_collector_cannot_hold_a_flush_or_the_exit(
    spool_path: Path, server: hostile.HostileCollector, head: bytes
) -> None:
    server.default = hostile.trickle(head)
    tracked(spool_path)
    spooler = sqreen.Spooler(path=spool_path, url=server.url, http_timeout=30)
    started = time.monotonic()
    result = spooler.flush(timeout=3)  # past 60 s before
    assert time.monotonic() - started < 5
    assert result.delivered == 0 and result.pending == 3
    spooler.close(timeout=0)
    child = run_child("track_and_exit", str(spool_path), server.url, "5", "2")
    started = time.monotonic()
    child.wait(timeout=30)
    assert child.returncode == 0
    assert time.monotonic() - started < 10  # past 30 s before, with shutdown_timeout=2


def test_an_answer_too_large_to_read_whole_never_settles_its_batch(
    spool_path: Path, collector: Any
) -> None:
    """900 events rejected with 1.2 KB reasons: the answer is 1.1 MiB. Cut at 1 MiB it read as
    "nothing rejected" and all 900 counted as delivered; now the batch is retried, then
    halved until the answers fit, and every rejection is counted."""
    reason = "r" * 1200

    def reject_all(batch: dict[str, Any]) -> Answer:
        refused = [{"id": e["id"], "reason": reason} for e in batch["events"]]
        return Answer(200, orjson.dumps({"rejected": refused}))

    collector.default = reject_all
    tracked(spool_path, 900)
    spooler = sqreen.Spooler(path=spool_path, url=collector.url, retry_attempts=2)
    result = spooler.flush(timeout=30)
    spooler.close()
    assert (result.delivered, result.rejected, result.pending) == (0, 900, 0)
    assert len(collector.requests[0].answer.body) > 1024 * 1024
    assert counters(spool_path)["dropped.rejected"] == 900
