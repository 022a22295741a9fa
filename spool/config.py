"""Settings: keyword arguments first, then environment variables, then defaults.

Every setting ``name`` is read from ``SQREEN_SPOOL_<NAME>`` (or ``SQREEN_<NAME>`` for the ones
shared with the Sqreen agent, such as ``url``), durations in seconds and sizes in bytes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .urls import mask_url, parse_subject, parse_url

DURABILITY_LEVELS = ("process", "power")

DEFAULT_DURABILITY = "process"
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_NATS_SUBJECT = "sqreen.events"
DEFAULT_STRICT = False
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_HEARTBEAT_DELAY = 60.0
DEFAULT_BATCH_SIZE = 1000
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024
DEFAULT_LEASE = 30.0
# Longer leases are refused: a claim expiring later than this from now was written by a clock
# that has since stepped back (see sqreen.storage.outbox).
LEASE_MAX = 3600.0
DEFAULT_HTTP_TIMEOUT = 10.0
DEFAULT_RETRY_ATTEMPTS = 3
DEFAULT_KEEP_DELIVERED = 0.0
DEFAULT_MAX_AGE = 3 * 24 * 3600.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_WIDEST_BLOCK = (8, 32)
DEFAULT_TRUSTED_PROXIES = 1
# The Sqreen agents' defaults for PII scrubbing.
DEFAULT_SENSITIVE_KEYS = (
    "password",
    "secret",
    "passwd",
    "authorization",
    "api_key",
    "apikey",
    "access_token",
)
DEFAULT_SENSITIVE_PATTERN = r"^(?:\d[ -]*?){13,16}$"


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def default_path(environ: Mapping[str, str] = os.environ) -> Path:
    """The per-user spool: ``$XDG_STATE_HOME/sqreen/spool.db`` (``~/.local/state`` if unset)."""
    state_home = environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state_home) / "sqreen" / "spool.db"


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


# No duration setting or option means more than this: a longer one is a typo (and overflows the
# dates computed from it).
MAX_SECONDS = 10 * 365 * 86400.0

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """A duration: a number of seconds, or a string of one with a unit ``s``, ``m``, ``h``,
    ``d`` or ``w`` (``90``, ``30s``, ``10m``, ``1h``, ``1.5d``, ``1w``), finite, at most
    :data:`MAX_SECONDS`. One parser for settings, command-line options and stored actions."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError("expected a duration: seconds, or a number with s, m, h, d or w")
    if isinstance(value, str):
        found = _DURATION.fullmatch(value.lower())
        if found is None:
            raise ValueError(f"{value!r} is not a duration (examples: 90, 30s, 10m, 1h, 2d, 1w)")
        seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    else:
        seconds = float(value)
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"expected a duration from 0 to {MAX_SECONDS:.0f} seconds (ten years)")
    return seconds


def seconds_at_least(
    minimum: float, why: str, maximum: float = MAX_SECONDS
) -> Callable[[object], float]:
    """A duration setting that refuses values below ``minimum``, saying ``why``, and above
    ``maximum``."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"expected at least {minimum:g} seconds: {why}")
        if seconds > maximum:
            raise ValueError(f"expected at most {maximum:g} seconds")
        return seconds

    return parse


def parse_widest(value: object) -> tuple[int, int]:
    """The widest ranges a collector may block: IPv4 and IPv6 prefix lengths, ``8,32``."""
    if isinstance(value, str):
        parts = [part.strip().lstrip("/") for part in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = [str(part) for part in value]
    else:
        raise TypeError("expected two prefix lengths, IPv4 then IPv6: 8,32")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError("expected two prefix lengths, IPv4 then IPv6: 8,32")
    v4, v6 = int(parts[0]), int(parts[1])
    if v4 > 32 or v6 > 128:
        raise ValueError("an IPv4 prefix is at most 32, an IPv6 one at most 128")
    return v4, v6


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?))?b?\s*", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: object) -> int:
    """A size in bytes: a whole number, or a number with a unit (``64MiB``, ``512 KiB``,
    ``1GB``; ``KiB`` and its kin are powers of 1024, ``KB`` of 1000), more than 0."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("expected a size: bytes, or a number with KiB, MiB, GiB (or KB, MB, GB)")
    found = _SIZE.fullmatch(str(value))
    if found is None:
        raise ValueError(f"{value!r} is not a size (examples: 67108864, 64MiB, 512KiB, 1GB)")
    number, prefix, binary = found.groups()
    base = 1024 if binary else 1000
    size = int(float(number) * base ** _POWERS.get((prefix or "").lower(), 0))
    if size <= 0:
        raise ValueError("expected a size > 0")
    return size


def parse_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("expected a whole number")
    count = int(value)
    if count <= 0:
        raise ValueError("expected a whole number > 0")
    return count


def parse_optional_path(value: object) -> Path | None:
    """A file path; empty means none."""
    return parse_path(value) if str(value).strip() else None


def parse_keys(value: object) -> tuple[str, ...]:
    """A comma-separated list (or a sequence of str) of non-empty names."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        raise TypeError("expected comma-separated names")
    return tuple(item.strip() for item in items if item.strip())


def parse_pattern(value: object) -> str | None:
    """A regular expression, checked now so that a typo fails at startup, not per request."""
    if not isinstance(value, str):
        raise TypeError("expected a regular expression")
    if not value:
        return None  # empty: no value pattern
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


def parse_header(value: object) -> str | None:
    """An HTTP header name such as X-Forwarded-For; empty means none."""
    if not isinstance(value, str):
        raise TypeError("expected a header name")
    name = value.strip()
    if name and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
        raise ValueError("expected an HTTP header name such as X-Forwarded-For")
    return name or None


def parse_trusted_proxies(value: object) -> int | tuple[str, ...]:
    """The proxies in front of the application, for ``ip_header``: a hop count (``1``: one
    proxy appends the address it saw) or their addresses and ranges (``10.0.0.0/8,::1``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        hops = value
    elif isinstance(value, str) and value.strip().isdigit():
        hops = int(value)
    else:
        ranges = parse_keys(value)
        for text in ranges:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"{text!r} is neither a hop count nor an address or CIDR range"
                ) from None
        if not ranges:
            raise ValueError("expected a hop count (1) or proxy addresses and ranges")
        return ranges
    if not 1 <= hops <= 64:
        raise ValueError("expected a hop count from 1 to 64")
    return hops


def parse_token(value: object) -> str | None:
    """A credential, checked without ever being echoed: surrounding white space (a secret
    mounted from a file ends with a newline) is stripped; what is left must be printable ASCII,
    the only bytes an HTTP header may carry."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    token = value.strip()
    if not token.isascii() or not token.isprintable():
        raise ValueError("it holds characters an HTTP header cannot carry (non-ASCII or control)")
    return token or None


def parse_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def parse_path(value: object) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise TypeError("expected a file path")
    return Path(value).expanduser()


def parse_durability(value: object) -> str:
    lowered = str(value).strip().lower()
    if lowered not in DURABILITY_LEVELS:
        raise ValueError(f"expected one of {', '.join(DURABILITY_LEVELS)}")
    return lowered


def _setting(env: str, parse: Callable[[object], Any], default: Any, repr: bool = True) -> Any:
    return dataclasses.field(default=default, repr=repr, metadata={"env": env, "parse": parse})


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    """The resolved configuration of one spool. Build it with :meth:`resolve`."""

    path: Path = _setting("SQREEN_SPOOL_PATH", parse_path, None)
    durability: str = _setting("SQREEN_SPOOL_DURABILITY", parse_durability, DEFAULT_DURABILITY)
    lock_timeout: float = _setting(
        "SQREEN_SPOOL_LOCK_TIMEOUT",
        seconds_at_least(0.01, "a shorter wait fails every write that meets another"),
        DEFAULT_LOCK_TIMEOUT,
    )
    strict: bool = _setting("SQREEN_SPOOL_STRICT", parse_bool, DEFAULT_STRICT)
    shutdown_timeout: float = _setting(
        "SQREEN_SHUTDOWN_TIMEOUT", parse_duration, DEFAULT_SHUTDOWN_TIMEOUT
    )
    url: str | None = _setting("SQREEN_URL", parse_url, None)
    token: str | None = _setting("SQREEN_TOKEN", parse_token, None, repr=False)  # never logged
    allow_insecure_http: bool = _setting("SQREEN_SPOOL_ALLOW_INSECURE_HTTP", parse_bool, False)
    # The JetStream sink (SQREEN_URL=nats://...): the subject events are published on (drop
    # reports on <subject>.dropped), a credentials file, and whether a missing stream may be made.
    nats_subject: str = _setting("SQREEN_SPOOL_NATS_SUBJECT", parse_subject, DEFAULT_NATS_SUBJECT)
    nats_credentials: Path | None = _setting(
        "SQREEN_SPOOL_NATS_CREDENTIALS", parse_optional_path, None
    )
    nats_create_stream: bool = _setting("SQREEN_SPOOL_NATS_CREATE_STREAM", parse_bool, False)
    heartbeat_delay: float = _setting(
        "SQREEN_HEARTBEAT_DELAY",
        seconds_at_least(0.1, "a shorter heartbeat keeps a core busy delivering nothing"),
        DEFAULT_HEARTBEAT_DELAY,
    )
    batch_size: int = _setting("SQREEN_SPOOL_BATCH_SIZE", parse_count, DEFAULT_BATCH_SIZE)
    max_batch_bytes: int = _setting(
        "SQREEN_SPOOL_MAX_BATCH_BYTES", parse_size, DEFAULT_MAX_BATCH_BYTES
    )
    lease: float = _setting(
        "SQREEN_SPOOL_LEASE",
        seconds_at_least(
            1.0, "a shorter lease expires while its batch is still being sent", LEASE_MAX
        ),
        DEFAULT_LEASE,
    )
    http_timeout: float = _setting(
        "SQREEN_SPOOL_HTTP_TIMEOUT",
        seconds_at_least(0.1, "a shorter timeout fails every request"),
        DEFAULT_HTTP_TIMEOUT,
    )
    retry_attempts: int = _setting(
        "SQREEN_SPOOL_RETRY_ATTEMPTS", parse_count, DEFAULT_RETRY_ATTEMPTS
    )
    keep_delivered: float = _setting(
        "SQREEN_SPOOL_KEEP_DELIVERED", parse_duration, DEFAULT_KEEP_DELIVERED
    )
    max_age: float = _setting(
        "SQREEN_SPOOL_MAX_AGE",
        seconds_at_least(0.1, "a shorter age drops every event before it can be sent"),
        DEFAULT_MAX_AGE,
    )
    max_bytes: int = _setting("SQREEN_SPOOL_MAX_BYTES", parse_size, DEFAULT_MAX_BYTES)
    # Event names (or fnmatch patterns) of the security class, beside the library's own and the
    # collector's urgent ones: kept longest and sent first (see sqreen.priority).
    security_events: tuple[str, ...] = _setting("SQREEN_SPOOL_SECURITY_EVENTS", parse_keys, ())
    ip_header: str | None = _setting("SQREEN_IP_HEADER", parse_header, None)
    # Who wrote ip_header: the client is the address the nearest untrusted hop was seen from.
    trusted_proxies: int | tuple[str, ...] = _setting(
        "SQREEN_TRUSTED_PROXIES", parse_trusted_proxies, DEFAULT_TRUSTED_PROXIES
    )
    # The widest range a collector's action may cover (an operator's may with --force).
    widest_block: tuple[int, int] = _setting(
        "SQREEN_SPOOL_WIDEST_BLOCK", parse_widest, DEFAULT_WIDEST_BLOCK
    )
    strip_sensitive_data: bool = _setting("SQREEN_STRIP_SENSITIVE_DATA", parse_bool, True)
    strip_sensitive_keys: tuple[str, ...] = _setting(
        "SQREEN_STRIP_SENSITIVE_KEYS", parse_keys, DEFAULT_SENSITIVE_KEYS
    )
    strip_sensitive_regex: str | None = _setting(
        "SQREEN_STRIP_SENSITIVE_REGEX", parse_pattern, DEFAULT_SENSITIVE_PATTERN
    )
    strip_sensitive_properties: bool = _setting(
        "SQREEN_STRIP_SENSITIVE_PROPERTIES", parse_bool, False
    )

    def __repr__(self) -> str:
        def shown(name: str) -> object:
            value = getattr(self, name)
            return mask_url(value) if name == "url" and value else value

        fields = (f.name for f in dataclasses.fields(self) if f.repr)
        return f"Settings({', '.join(f'{name}={shown(name)!r}' for name in fields)})"

    @classmethod
    def resolve(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
    ) -> Settings:
        """Combine keyword ``overrides`` (``None`` means unset), the environment and defaults."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
            )
        values: dict[str, Any] = {}
        for name, field in fields.items():
            parse: Callable[[object], Any] = field.metadata["parse"]
            if name in overrides:
                raw, source = overrides[name], f"argument {name!r}"
            elif field.metadata["env"] in environ:
                raw, source = environ[field.metadata["env"]], field.metadata["env"]
            else:
                continue
            try:
                values[name] = parse(raw)
            except (TypeError, ValueError) as exc:
                shown = "" if not field.repr else f" {raw!r}"  # a secret is never echoed
                raise ConfigError(f"{source}: invalid value{shown}: {exc}") from None
        if "path" not in values:
            values["path"] = default_path(environ)
        return cls(**values)
