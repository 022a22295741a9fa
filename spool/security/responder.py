"""The security responses applied to requests: a starting request screened by its client IP,
an identified user checked, and each request stopped recorded as a tallied ``sq.action.*``
event. One per spooler; requests read the enforcer's compiled set and never the spool."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .. import clock
from ..errors import UserBlocked
from ..request.context import RequestContext
from .actions import Action
from .enforcer import Enforcer
from .tally import Tally

# Records a library event (a reserved name) the way track() records the application's.
Record = Callable[[str, Mapping[str, Any]], bool]


class Responder:
    """Screens requests and identified users against one spool's actions."""

    def __init__(self, path: Path, record: Record) -> None:
        self.enforcer = Enforcer(path)
        self._stopped = Tally()
        self._record = record

    def screen(self, request: RequestContext, ip: Callable[[], str | None]) -> Action | None:
        """The IP security response for a request that is starting, if any (marked on the
        request, its event recorded): the middleware then answers it instead of the
        application. ``ip`` computes the client IP, only when some action names addresses."""
        actions = self.enforcer.current()
        if not actions.has_ip:
            return None  # the usual case: one clock read, in current()
        address = ip()
        action = actions.for_ip(address, clock.now())
        if action is not None:
            self._stop(request, action, {"ip_address": address})
        return action

    def check_user(self, request: RequestContext, identifiers: dict[str, str | int]) -> None:
        """Raise UserBlocked when a security response names the user the request just
        identified."""
        action = self.enforcer.current().for_user(identifiers, clock.now())
        if action is not None:
            self._stop(request, action, {"user": identifiers})
            raise UserBlocked(action.action_id, action.url)

    def report(self, everything: bool = False) -> None:
        """Record the counts of the tallies whose minute is over (all of them at close)."""
        for action, output, requests in self._stopped.due(time.monotonic(), everything):
            self._event(action, output, requests)

    def close(self) -> None:
        self.report(everything=True)  # what came in since the caller's last report
        self.enforcer.close()

    def _stop(self, request: RequestContext, action: Action, output: dict[str, Any]) -> None:
        request.blocked = action
        if action.send_response:
            client = orjson.dumps(output, option=orjson.OPT_SORT_KEYS).decode()
            requests = self._stopped.stopped(action, client, output, time.monotonic())
            if requests is not None:
                self._event(action, output, requests)

    def _event(self, action: Action, output: dict[str, Any], requests: int) -> None:
        """The ``sq.action.<name>`` event: the agent's properties, and how many requests the
        action stopped for that client since the last such event (see .tally)."""
        properties = {"output": output, "action_id": action.action_id, "requests": requests}
        self._record(f"sq.action.{action.action}", {"properties": properties})
