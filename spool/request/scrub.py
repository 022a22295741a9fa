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
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any
from urllib.parse import unquote_plus

from ..config import DEFAULT_SENSITIVE_KEYS, DEFAULT_SENSITIVE_PATTERN

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
        self._matches: Callable[[str], object] | None = None
        # Shorter values cannot match: most parameters are skipped without a call.
        self._shortest_match = 0
        if enabled and pattern == DEFAULT_SENSITIVE_PATTERN:
            self._matches = looks_like_card_number
            self._shortest_match = CARD_DIGITS_MIN
        elif enabled and pattern:
            self._matches = re.compile(pattern).search
        self._decisions: dict[str, bool] = {}
        self._default_pattern = self._matches is looks_like_card_number
        # Strings shorter than this come out of text() as they went in: most parameters, which
        # then cost no call.
        self.unchanged_below = self._shortest_match if self._matches else MAX_VALUE_LENGTH + 1

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
        kind = type(value)
        if kind is str:  # the common cases first, by exact type: this runs per parameter
            return self.text(value)
        if kind is dict:
            return self._scrub_mapping(value, depth)
        if kind is list:
            return self._scrub_items(value, depth)
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # NaN and infinities are not JSON
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            return str(value)  # nor, for the encoder, are integers past 64 bits
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, str):
            return self.text(str(value))
        if isinstance(value, bytes | bytearray | memoryview):
            return self.text(bytes(value[: MAX_VALUE_LENGTH * 4]).decode("utf-8", "replace"))
        if isinstance(value, Mapping):
            return self._scrub_mapping(value, depth)
        if isinstance(value, list | tuple | set | frozenset):
            return self._scrub_items(value, depth)
        try:
            text = str(value)
        except Exception:  # an object whose __str__ fails must not break the caller's request
            text = f"<{type(value).__name__}>"
        return self.text(text)

    def _scrub_mapping(self, value: Mapping[Any, Any], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        scrubbed: dict[str, Any] = {}
        decisions = self._decisions
        for key, item in islice(value.items(), MAX_ITEMS):
            name = key if type(key) is str else str(self.scrub(key, MAX_DEPTH))
            sensitive = decisions.get(name)
            if sensitive is None:
                sensitive = self.sensitive_key(name)
            if len(name) > MAX_VALUE_LENGTH:  # names are cut like values (after the decision)
                name = name[:MAX_VALUE_LENGTH] + "…"
            if sensitive and self.enabled:
                scrubbed[name] = PLACEHOLDER
            elif type(item) is str:  # most parameters: skip a call
                scrubbed[name] = item if len(item) < self.unchanged_below else self.text(item)
            else:
                scrubbed[name] = self.scrub(item, depth + 1)
        return scrubbed

    def _scrub_items(self, value: Iterable[Any], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        return [self.scrub(item, depth + 1) for item in islice(value, MAX_ITEMS)]

    def scrub_fields(self, parsed: dict[str, Any]) -> dict[str, Any]:
        """A query string's or form's fields (as :func:`sqreen.request.context.fields` parses them:
        str names, str or list-of-str values), scrubbed in place: the same result as
        :meth:`scrub` without its copy and its generic walk, as this runs on every request."""
        decisions = self._decisions
        short = self.unchanged_below
        enabled = self.enabled
        for name, value in parsed.items():  # assigning existing keys: the dict keeps its size
            sensitive = decisions.get(name)
            if sensitive is None:
                if len(name) > MAX_VALUE_LENGTH:
                    walked: dict[str, Any] = self._scrub_mapping(parsed, 0)  # names to cut
                    return walked
                sensitive = self.sensitive_key(name)
            if sensitive and enabled:
                parsed[name] = PLACEHOLDER
            elif type(value) is str:
                if len(value) >= short:
                    parsed[name] = self.text(value)
            else:
                parsed[name] = [v if len(v) < short else self.text(v) for v in value]
        return parsed

    def scrub_url(self, url: str) -> str:
        """``url`` with the values of its query string scrubbed as parameters are, in place:
        a referer keeps its shape (``...?q=shoes&password=<Redacted by Sqreen>``)."""
        base, mark, query = url.partition("?")
        if not mark or not self.enabled or self._nothing_to_hide(query):
            return url
        query, hash_mark, fragment = query.partition("#")
        pieces = query.split("&", MAX_ITEMS)[:MAX_ITEMS]  # as parameters are, past 100 cut
        for index, piece in enumerate(pieces):
            name, _, value = piece.partition("=")
            if "%" in piece or "+" in piece:
                name, value = unquote_plus(name), unquote_plus(value)
            if self.sensitive_key(name) or (
                len(value) >= self._shortest_match and self.text(value) == PLACEHOLDER
            ):
                pieces[index] = f"{piece.partition('=')[0]}={PLACEHOLDER}"
        return f"{base}?{'&'.join(pieces)}{hash_mark}{fragment}"

    def _nothing_to_hide(self, query: str) -> bool:
        """Whether a query string certainly holds no sensitive name and no value the pattern
        matches, by two searches of the whole string (most referers), not a walk of its
        pieces. Escapes, a custom pattern and long strings take the walk."""
        if "%" in query or len(query) > MAX_VALUE_LENGTH:
            return False
        # A name with a key in it makes the whole string contain the key.
        if any(map(normalize_key(query).__contains__, self._keys)):
            return False
        if self._matches is None:
            return True
        return self._default_pattern and _DIGIT_RUN.search(query) is None

    def text(self, text: str) -> str:
        """One string: the placeholder if it matches the pattern, else itself, cut to size."""
        if (
            self._matches is not None
            and self._shortest_match <= len(text) <= MAX_PATTERN_INPUT
            and self._matches(text)
        ):
            return PLACEHOLDER
        return text if len(text) <= MAX_VALUE_LENGTH else text[:MAX_VALUE_LENGTH] + "…"


_CARD_CHARACTERS = "0123456789 -"
CARD_DIGITS_MIN, CARD_DIGITS_MAX = 13, 16


def looks_like_card_number(text: str) -> bool:
    """Exactly what the default pattern ``^(?:\\d[ -]*?){13,16}$`` matches, several times
    faster on the short values most parameters hold: 13 to 16 digits, each followed by any
    spaces or dashes, and nothing else."""
    if not text.isascii():  # the pattern's \\d also matches other scripts' digits
        return _DEFAULT.search(text) is not None  # the text as given: see the next line
    if text.endswith("\n"):  # the pattern's $ also matches before a final newline
        text = text[:-1]
    if len(text) < CARD_DIGITS_MIN:
        return False
    if not text[0].isdigit() or text.strip(_CARD_CHARACTERS):
        return False
    return CARD_DIGITS_MIN <= len(text) - text.count(" ") - text.count("-") <= CARD_DIGITS_MAX


_DEFAULT = re.compile(DEFAULT_SENSITIVE_PATTERN)
# Where a card number could hide in a query string: 13 digits in a row, with separators.
_DIGIT_RUN = re.compile(r"\d(?:[ +\-]*\d){12}")
