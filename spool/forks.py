"""One way for an object to act around ``fork()``: its bound methods registered weakly.

``os.register_at_fork`` keeps what it is given for the life of the process and cannot forget it;
holding bound methods there would keep every spooler, store and sink ever made alive. Each
method is held through a ``weakref.WeakMethod`` instead, and skipped once its object is gone.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable


def at_fork(
    *,
    before: Callable[[], object] | None = None,
    after_in_parent: Callable[[], object] | None = None,
    after_in_child: Callable[[], object] | None = None,
) -> None:
    """Run these bound methods around every ``fork()`` while their objects live."""
    for moment, method in (
        ("before", before),
        ("after_in_parent", after_in_parent),
        ("after_in_child", after_in_child),
    ):
        if method is not None:
            os.register_at_fork(**{moment: _weakly(method)})


def _weakly(method: Callable[[], object]) -> Callable[[], None]:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        found = ref()
        if found is not None:
            found()

    return call
