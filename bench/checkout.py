"""Another checkout of the library, run beside this one in a bench (``--against DIR``, its
``spool/`` folder, e.g. a worktree of an older commit).

Loaded in this process under another package name (:func:`load`), it would still migrate a
new spool with this checkout's migrations (``sqreen.migrations``, found by name), which it may
not know. So its spools are made first by a child process that imports it as ``sqreen``, with
its own migrations (:func:`make_spool`); the loaded copy then opens a current spool.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def load(folder: str, name: str = "baseline") -> Any:
    """The library in ``folder`` as the package ``name``, beside this checkout's ``sqreen``."""
    spec = importlib.util.spec_from_file_location(
        name, Path(folder) / "__init__.py", submodule_search_locations=[folder]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{name}.integrations.wsgi")
    return module


def importable(folder: str, work: Path) -> Path:
    """A folder to put on ``PYTHONPATH`` so that ``import sqreen`` imports the checkout at
    ``folder``, its own migrations included (installed, they are ``sqreen.migrations``)."""
    source = Path(folder).resolve()
    package = work / "sqreen"
    package.mkdir(parents=True)
    for entry in source.iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "migrations").symlink_to(source.parent / "migrations")
    return work


def run(folder: str, code: str, *args: str, path: tuple[str, ...] = ()) -> str:
    """Run ``python -c code args`` with the checkout at ``folder`` as ``sqreen`` (and ``path``
    importable too); its standard output."""
    with tempfile.TemporaryDirectory(prefix="sqreen-checkout-") as work:
        shim = importable(folder, Path(work))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(shim), *path))}
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return done.stdout


def make_spool(folder: str, path: Path) -> None:
    """Make (and migrate) a spool at ``path`` with the checkout at ``folder``."""
    run(folder, "import sys, sqreen; s = sqreen.Spooler(path=sys.argv[1]); s.start(); s.close()",
        str(path))  # fmt: skip
