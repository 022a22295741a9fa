"""Rolling deploys with real releases: the release before the newest migration, built from this
repository's history as a wheel, and the current code, on one spool while events flow;
then a rollback to the old release, then forward again. Nothing acknowledged is lost, nothing
is stored twice by the collector."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sqreen.storage import schema

from .test_cli_processes import Collect

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time, sqreen
path, url, tag, seconds = sys.argv[1:5]
spooler = sqreen.Spooler(path=path, url=url, heartbeat_delay=0.2)
end, i = time.monotonic() + float(seconds), 0
while time.monotonic() < end:
    if spooler.track("deploy", {"properties": {"tag": f"{tag}-{i}"}}):
        print(f"{tag}-{i}", flush=True)
    i += 1
    time.sleep(0.002)
spooler.flush(30)
spooler.close()
"""


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True)
    return done.stdout.decode().strip()


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The release just before the newest migration (it does not know that revision),
    installed into a folder of its own; the last commit when the newest migration is not
    committed yet."""
    if not (ROOT / ".git").exists():
        pytest.fail("the rolling-deploy test builds an older release from the git history")
    newest = sorted((ROOT / "migrations" / "versions").glob("0*.py"))[-1].name
    added = git(
        "log", "--diff-filter=A", "--format=%H", "-1", "--", f"migrations/versions/{newest}"
    )
    commit = f"{added}^" if added else "HEAD"
    work = tmp_path_factory.mktemp("old-release")
    source = work / "source"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True,
                             check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(work), str(source)], check=True)  # fmt: skip
    (wheel,) = work.glob("sqreen_spool-*.whl")
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(site), str(wheel)], check=True)  # fmt: skip
    yield site


def release(site: Path | None, spool: Path, url: str, tag: str, seconds: float) -> Any:
    env = {**os.environ, "PYTHONPATH": str(site)} if site is not None else dict(os.environ)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(spool), url, tag, str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip


def acknowledged(*children: Any) -> set[str]:
    found: set[str] = set()
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        found |= set(out.split())
    return found


def test_old_and_new_side_by_side_then_rollback_then_forward(
    old_release: Path, tmp_path: Path, spool_path: Path
) -> None:
    out = tmp_path / "received.jsonl"
    collector = Collect(out)
    try:
        which = subprocess.run(
            [sys.executable, "-c", "import sqreen.storage.schema as s; print(s.__file__, s.HEAD)"],
            env={**os.environ, "PYTHONPATH": str(old_release)}, capture_output=True, text=True,
        )  # fmt: skip
        where, head = which.stdout.split()
        assert where.startswith(str(old_release))  # the old release really runs
        assert head != schema.HEAD  # and it does not know the newest revision
        sent = acknowledged(  # both at once, on one spool
            release(old_release, spool_path, collector.url, "old", 3),
            release(None, spool_path, collector.url, "new", 3),
        )
        sent |= acknowledged(release(old_release, spool_path, collector.url, "rollback", 2))
        sent |= acknowledged(release(None, spool_path, collector.url, "forward", 2))
    finally:
        _, printed = collector.stop()
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    tags = [e["properties"]["tag"] for e in events]
    assert len(tags) == len(set(tags))  # stored once each
    assert sent <= set(tags), f"lost: {sorted(sent - set(tags))[:5]}"
    for prefix in ("old", "new", "rollback", "forward"):
        assert any(t.startswith(f"{prefix}-") for t in sent), prefix
    print(f"{len(sent)} acknowledged, {len(tags)} stored; {printed[-1]}")
