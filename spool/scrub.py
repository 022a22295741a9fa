"""PII scrubbing: values under sensitive keys, and values that look like card numbers, are
replaced by a placeholder before anything is written to the spool.

A key is sensitive when, lower-cased and with ``-`` read as ``_``, it contains one of the
configured keys (``X-Api-Key`` contains ``api_key``). A value is sensitive when it matches the
configured pattern in full. The walk never raises: anything that is not plain JSON comes out as
a string, nesting past a limit and overlong values are cut, so the result always encodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .config import DEFAULT_SENSITIVE_KEYS, DEFAULT_SENSITIVE_PATTERN

PLACEHOLDER = "<Redacted by Sqreen>"
TOO_DEEP = "<too deep>"

MAX_DEPTH = 16
# Values are cut to this many characters; the pattern is tried only on values this long at most,
# which bounds its cost whatever the input (a card number with separators is far shorter).
MAX_VALUE_LENGTH = 1024
MAX_PATTERN_INPUT = 128
MAX_ITEMS = 100
# Key decisions are cached: request parameters repeat the same few names over and over.
_CACHE_LIMIT = 4096

_SCALARS = (bool, int, float, type(None))


def normalize_key(key: str) -> str:
    return key.lower().replace("-", "_")


class Scrubber:
    """Scrubs values by the configured keys and pattern; ``enabled=False`` only makes values
    safe to encode (cut to size, non-JSON turned into strings)."""

    def __init__(
        self,
        keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
        pattern: str | None = DEFAULT_SENSITIVE_PATTERN,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self._keys = tuple(normalize_key(k) for k in keys if k)
        self._pattern = re.compile(pattern) if enabled and pattern else None
        self._decisions: dict[str, bool] = {}

    def sensitive_key(self, key: str) -> bool:
        decided = self._decisions.get(key)
        if decided is None:
            normalized = normalize_key(key)
            decided = any(k in normalized for k in self._keys)
            if len(self._decisions) < _CACHE_LIMIT:
                self._decisions[key] = decided
        return decided

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """A copy of ``value`` with sensitive parts replaced; plain JSON whatever came in."""
        if isinstance(value, str):
            return self._scrub_text(value)
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # NaN and infinities are not JSON
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            return str(value)  # nor, for the encoder, are integers past 64 bits
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return self._scrub_text(bytes(value[: MAX_VALUE_LENGTH * 4]).decode("utf-8", "replace"))
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, Mapping):
            scrubbed: dict[str, Any] = {}
            for key, item in list(value.items())[:MAX_ITEMS]:
                name = key if isinstance(key, str) else str(self.scrub(key, MAX_DEPTH))
                if self.enabled and self.sensitive_key(name):
                    scrubbed[name] = PLACEHOLDER
                else:
                    scrubbed[name] = self.scrub(item, depth + 1)
            return scrubbed
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(item, depth + 1) for item in list(value)[:MAX_ITEMS]]
        try:
            text = str(value)
        except Exception:  # an object whose __str__ fails must not break the caller's request
            text = f"<{type(value).__name__}>"
        return self._scrub_text(text)

    def _scrub_text(self, text: str) -> str:
        if (
            self._pattern is not None
            and len(text) <= MAX_PATTERN_INPUT
            and self._pattern.search(text)
        ):
            return PLACEHOLDER
        return text if len(text) <= MAX_VALUE_LENGTH else text[:MAX_VALUE_LENGTH] + "…"
