"""Event classes: which events are *security* events, kept longest and sent first.

When the collector is away, the spool's bound decides what is lost. Security events are the
library's own (``sqreen.auth_track``, ``sqreen.signup_track``, ``sq.action.*``), the names the
collector marks urgent (its playbooks watch them), and the names or patterns the application
lists in ``security_events`` (``SQREEN_SPOOL_SECURITY_EVENTS``): ``track()`` keeps the agent's
arguments, so the class comes from a setting, not from the call. Every other event is
*analytics*. The bound drops analytics first, oldest first, and security events only when
nothing else is left; delivery sends security events first (see docs/storage.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

BUILT_IN = frozenset({"sqreen.auth_track", "sqreen.signup_track"})
ACTION_PREFIX = "sq.action."
# No urgent names: one object, so that the answers kept stay valid (see Classes.security).
NO_NAMES: frozenset[str] = frozenset()
# Names are the application's, and may be many: the answers kept are bounded.
_REMEMBERED = 4096


class Classes:
    """Tells security events from analytics by name, remembering each name's answer."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self._patterns = tuple(patterns)
        # The collector's urgent names the answers below were given for, and those answers:
        # read directly by the hot path (Spooler._record) before it calls security().
        self.urgent = NO_NAMES
        self.known: dict[str, bool] = {}

    def security(self, name: str, urgent: frozenset[str] = NO_NAMES) -> bool:
        """Whether ``name`` is a security event's, given the collector's ``urgent`` names."""
        if urgent is not self.urgent:  # the collector's list changed: answers may too
            self.urgent, self.known = urgent, {}
        known = self.known.get(name)
        if known is None:
            known = (
                name in BUILT_IN
                or name.startswith(ACTION_PREFIX)
                or name in urgent
                or any(fnmatchcase(name, pattern) for pattern in self._patterns)
            )
            if len(self.known) >= _REMEMBERED:
                self.known = {}
            self.known[name] = known
        return known
