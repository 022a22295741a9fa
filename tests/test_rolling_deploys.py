"""Rolling deploys with real releases built from this repository's history as wheels, on one
spool while events flow, then a rollback, then forward again.

Across an additive migration, the older release keeps writing the spool the newer one migrated:
nothing acknowledged is lost, nothing is stored twice by the collector. Across a breaking one
(the current code's newest, 0007_packed, is), the older release refuses the spool without
raising and acknowledges nothing, and the current code loses nothing of its own.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
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


def added(migration: str) -> str | None:
    """The commit that added a migration file (None while it is not committed)."""
    path = f"migrations/versions/{migration}.py"
    return git("log", "--diff-filter=A", "--format=%H", "-1", "--", path) or None


def build(commit: str, work: Path) -> Path:
    """The release at ``commit``, built as a wheel and installed into a folder of its own."""
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
    return site


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Releases from this repository's history, by what they are to the newest migrations:
    ``before_additive`` does not know the newest additive migration, ``additive`` is the one
    that added it; ``before_newest`` does not know the newest migration (the last commit while
    that migration is not committed yet)."""
    if not (ROOT / ".git").exists():
        pytest.fail("the rolling-deploy test builds older releases from the git history")
    newest = schema.HEAD
    newest_additive = next(r for r in reversed(schema.REVISIONS) if r in schema.ADDITIVE)
    additive = added(newest_additive)
    assert additive is not None, "commit the migration first"
    newest_added = added(newest)
    commits = {
        "before_additive": f"{additive}^",
        "additive": additive,
        "before_newest": f"{newest_added}^" if newest_added else "HEAD",
    }
    return {name: build(commit, tmp_path_factory.mktemp(name)) for name, commit in commits.items()}


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


def knows(site: Path | None) -> str:
    """The newest revision a release knows (checking that it is the release that runs)."""
    env = {**os.environ, "PYTHONPATH": str(site)} if site is not None else dict(os.environ)
    code = "import sqreen.storage.schema as s; print(s.__file__, s.HEAD)"
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    where, head = found.stdout.split()
    assert site is None or where.startswith(str(site))
    return head


def test_across_an_additive_migration_old_and_new_side_by_side_then_rollback_then_forward(
    releases: dict[str, Path], tmp_path: Path, spool_path: Path
) -> None:
    """The release that added the newest additive migration and the one before it: the older
    keeps writing the spool the newer migrated, beside it and alone, and nothing is lost."""
    old, new = releases["before_additive"], releases["additive"]
    assert knows(old) != knows(new)
    out = tmp_path / "received.jsonl"
    collector = Collect(out)
    try:
        sent = acknowledged(  # both at once, on one spool
            release(old, spool_path, collector.url, "old", 3),
            release(new, spool_path, collector.url, "new", 3),
        )
        sent |= acknowledged(release(old, spool_path, collector.url, "rollback", 2))
        sent |= acknowledged(release(new, spool_path, collector.url, "forward", 2))
    finally:
        _, printed = collector.stop()
    tags = stored_tags(out)
    assert len(tags) == len(set(tags))  # stored once each
    assert sent <= set(tags), f"lost: {sorted(sent - set(tags))[:5]}"
    for prefix in ("old", "new", "rollback", "forward"):
        assert any(t.startswith(f"{prefix}-") for t in sent), prefix
    print(f"{len(sent)} acknowledged, {len(tags)} stored; {printed[-1]}")


def test_across_the_newest_migration_with_this_code(
    releases: dict[str, Path], tmp_path: Path, spool_path: Path
) -> None:
    """The current code beside the release before the newest migration: when that migration is
    additive, the older release keeps writing; when it is breaking, the older one refuses the
    spool (track() returns False, the failure counted, never raised) and acknowledges nothing,
    and the current code loses nothing of its own, before and after the rollback."""
    old = releases["before_newest"]
    assert knows(old) != knows(None) == schema.HEAD
    writes = schema.HEAD in schema.ADDITIVE
    out = tmp_path / "received.jsonl"
    collector = Collect(out)
    try:
        new_sent = acknowledged(release(None, spool_path, collector.url, "new", 2))
        old_child = release(old, spool_path, collector.url, "old", 3)
        new_sent |= acknowledged(release(None, spool_path, collector.url, "beside", 3))
        old_sent = acknowledged(old_child)
        old_sent |= acknowledged(release(old, spool_path, collector.url, "rollback", 2))
        new_sent |= acknowledged(release(None, spool_path, collector.url, "forward", 2))
    finally:
        _, printed = collector.stop()
    tags = stored_tags(out)
    assert len(tags) == len(set(tags))
    assert new_sent | old_sent <= set(tags), f"lost: {sorted(new_sent - set(tags))[:5]}"
    assert bool(old_sent) == writes  # a breaking migration: the older release wrote nothing
    print(f"{len(new_sent)} + {len(old_sent)} acknowledged, {len(tags)} stored; {printed[-1]}")


def stored_tags(out: Path) -> list[str]:
    return [orjson.loads(line)["properties"]["tag"] for line in out.read_bytes().splitlines()]
