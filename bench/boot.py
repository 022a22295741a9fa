"""What the first ``track()`` of a process costs, with and without ``sqreen.start()`` at boot,
next to what any later ``track()`` costs, in one run:

    make bench                       # or: .venv/bin/python bench/boot.py [--rounds N]

Each round starts fresh interpreters in turn, on a new spool and on an existing one: one calls
``sqreen.start()``, waits half a second (requests come after the boot, and after the background
threads' first round), and times its first ``track()``, the other times its first ``track()``
without it; both time the 200 calls that follow. Printed: medians, and the ratio of the first
call to the later ones' median and p99, and to a later call made after the same half-second
pause (target, with ``start()``: about 1, issue 25): a call after an idle pause finds the
caches cold, the first one as any other.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
import time, sqreen
path = {path!r}
if {start}:
    sqreen.start(path=path)
else:
    sqreen.configure(path=path)
time.sleep(0.5)  # the first request comes after the boot (and the background threads' first round)
t = time.perf_counter(); sqreen.track("first"); first = time.perf_counter() - t
later = []
for i in range(200):
    t = time.perf_counter(); sqreen.track("later", {{"properties": {{"i": i}}}})
    later.append(time.perf_counter() - t)
later.sort()
time.sleep(0.5)  # the same pause as before the first call: caches as cold
t = time.perf_counter(); sqreen.track("after a pause"); paused = time.perf_counter() - t
print(first, later[100], later[197], paused)
"""


def run(path: Path, start: bool) -> tuple[float, float, float, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(path=str(path), start=start)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    first, later, tail, paused = done.stdout.split()
    return float(first), float(later), float(tail), float(paused)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sqreen-boot-") as tmp:
        for round_ in range(options.rounds):
            for spool in ("new", "existing"):
                for start in (True, False):
                    path = Path(tmp) / (f"new{round_}-{start}.db" if spool == "new" else "old.db")
                    name = f"{spool} spool, {'start() at boot' if start else 'no start()'}"
                    results.setdefault(name, []).append(run(path, start))
    print(f"{'':38} {'first µs':>9} {'later p50':>10} {'p99':>6} {'after pause':>12} "
          f"{'first/paused':>13}")  # fmt: skip
    for name, found in results.items():
        first, later, tail, paused = (statistics.median(f[i] for f in found) for i in range(4))
        print(f"{name:38} {first * 1e6:9.0f} {later * 1e6:10.0f} {tail * 1e6:6.0f} "
              f"{paused * 1e6:12.0f} {first / paused:13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
