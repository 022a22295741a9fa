"""The size bound during an outage: the largest the spool's files get, sampled every 10 ms.

    make bench                       # or: .venv/bin/python bench/peaks.py

Replays the three runs of the issue that set the bound's promise (each ~1 KiB events, as fast as
the threads go, nothing delivered): 200,000 events at the default 64 MiB with the collector
refusing connections; 10,000 at 1 MiB, refusing; 80,000 from 4 threads at 8 MiB with a collector
that accepts connections and never answers. Prints each peak against the bound and the ceiling.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ holds the collectors

import sqreen
from sqreen.storage.bound import ceiling
from sqreen.storage.files import WAL, size_of
from tests.test_bound import refusing, silent

MiB = 1024 * 1024
RUNS = [  # (bound, events, threads, collector)
    (64 * MiB, 200_000, 1, "refusing"),
    (1 * MiB, 10_000, 1, "refusing"),
    (8 * MiB, 80_000, 4, "silent"),
]


def run(directory: Path, max_bytes: int, events: int, threads: int, kind: str) -> None:
    path = directory / f"spool-{max_bytes}.db"
    collector: AbstractContextManager[str] = refusing() if kind == "refusing" else silent()
    peak, done = [0, 0, 0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            db, wal = size_of(str(path)), size_of(f"{path}{WAL}")
            if db + wal > peak[0]:
                peak[:] = [db + wal, db, wal]

    with collector as url:
        spooler = sqreen.Spooler(path=path, url=url, max_bytes=max_bytes)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()

        def work() -> None:
            for i in range(events // threads):
                spooler.track("outage", {"properties": {"i": i, "pad": "x" * 950}})

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        took = time.monotonic() - started
        spooler.close(timeout=1)
        done.set()
        sampler.join()
    print(
        f"{max_bytes / MiB:g} MiB, {events} events, {threads} thread(s), collector {kind}: "
        f"{took:.1f} s; largest {peak[1] / MiB:.2f} MiB + WAL {peak[2] / MiB:.2f} MiB = "
        f"{peak[0] / max_bytes:.2f}x the bound (ceiling {ceiling(max_bytes) / max_bytes:.2f}x); "
        f"after: {os.path.getsize(path) / MiB:.2f} MiB"
    )


def main() -> None:
    logging.getLogger("sqreen").setLevel(logging.CRITICAL)
    # A delivery thread still waiting on the silent collector when close() gave up on it may
    # write its failure into the spool after the close (see the README): ignore its files.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        for max_bytes, events, threads, kind in RUNS:
            run(Path(tmp), max_bytes, events, threads, kind)


if __name__ == "__main__":
    main()
