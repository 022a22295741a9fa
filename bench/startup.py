"""What ``import sqreen`` costs, and what it imports, next to another checkout, in one run.

    make bench                       # or: .venv/bin/python bench/startup.py [--against DIR]

Each round starts a fresh interpreter per contender, in turn, and reads ``-X importtime``'s
cumulative figure for ``sqreen`` (the interpreter's own start excluded); medians and the ratio
are printed, with the heavy modules each left in ``sys.modules``. ``--against`` takes another
checkout's root (a ``git worktree`` of an earlier commit), loaded as ``sqreen`` through a link
tree shaped like the installed package.

Target (issue 22): none of SQLAlchemy, Alembic, httpx or tenacity on ``import sqreen``, and at
most a quarter of the starting commit's cost.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HEAVY = ("sqlalchemy", "alembic", "httpx", "tenacity")
PROBE = "import sys, sqreen; print(' '.join(m for m in {heavy} if m in sys.modules))"
TOTAL = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| sqreen$", re.MULTILINE)


def link_tree(checkout: Path, into: Path) -> Path:
    """``checkout`` shaped as the installed package: spool/ as sqreen, cli/ and migrations/
    inside it."""
    package = into / "sqreen"
    package.mkdir(parents=True)
    for entry in (checkout / "spool").iterdir():
        (package / entry.name).symlink_to(entry)
    for name in ("cli", "migrations"):
        (package / name).symlink_to(checkout / name)
    return into


def measure(pythonpath: str | None) -> tuple[int, str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    found = TOTAL.search(done.stderr)
    assert found is not None, done.stderr[-500:]
    return int(found.group(1)), done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--against", type=Path, help="another checkout's root, run alongside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        contenders: dict[str, str | None] = {"this checkout": None}
        if args.against is not None:
            contenders["that one"] = str(link_tree(args.against.resolve(), Path(tmp)))
        samples: dict[str, list[int]] = {name: [] for name in contenders}
        heavy: dict[str, str] = {}
        for _ in range(args.rounds):
            for name, path in contenders.items():
                micros, loaded = measure(path)
                samples[name].append(micros)
                heavy[name] = loaded
    print(f"import sqreen: median of {args.rounds} fresh interpreters each, in ms")
    medians = {name: statistics.median(found) / 1000 for name, found in samples.items()}
    for name, median in medians.items():
        print(f"  {name:14} {median:7.1f}   heavy modules loaded: {heavy[name] or 'none'}")
    if len(medians) == 2:
        ours, theirs = medians.values()
        print(f"  this checkout / that one: {ours / theirs:.2f} (target: <= 0.25)")


if __name__ == "__main__":
    main()
