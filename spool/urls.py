"""URLs in settings: a collector's http(s) URL or a list of NATS servers, checked, told apart
and shown with their credentials masked."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters whose values are credentials, masked wherever a URL is shown.
_SECRET_QUERY_WORDS = ("token", "key", "secret", "password", "auth", "signature")
MASK = "***"

NATS_SCHEMES = ("nats", "tls")


def parse_url(value: object) -> str | None:
    """A collector's http(s):// URL, or NATS servers: ``nats://`` or ``tls://`` URLs,
    comma-separated."""
    if not isinstance(value, str):
        raise TypeError("expected a URL")
    url = value.strip()
    if not url:
        return None  # SQREEN_URL= (empty) means unset
    if is_nats(url):
        servers = nats_servers(url)
        if not all(urlsplit(s).scheme in NATS_SCHEMES and urlsplit(s).hostname for s in servers):
            raise ValueError("expected nats:// or tls:// URLs with a host, comma-separated")
        return ",".join(servers)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host, or nats:// servers")
    return url


def is_nats(url: str) -> bool:
    """Whether the URL names NATS servers (the JetStream sink) rather than an HTTP collector."""
    return url.partition("://")[0].lower() in NATS_SCHEMES


def nats_servers(url: str) -> list[str]:
    """The servers of a comma-separated list of NATS URLs."""
    return [server.strip() for server in url.split(",") if server.strip()]


def parse_subject(value: object) -> str:
    """A NATS subject to publish on: dot-separated tokens, no wildcards or white space."""
    subject = str(value).strip()
    if not re.fullmatch(r"[^.*>\s]+(\.[^.*>\s]+)*", subject):
        raise ValueError("expected a NATS subject such as sqreen.events (no wildcards)")
    return subject


def mask_url(url: str) -> str:
    """The URL with any password and credential-like query values replaced by ``***``."""
    if is_nats(url) and "," in url:
        return ",".join(mask_url(server) for server in nats_servers(url))
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    elif parts.username is not None and is_nats(url):  # nats://TOKEN@host: the name is the token
        netloc = netloc.replace(f"{parts.username}@", f"{MASK}@", 1)
    query = [
        (k, MASK if any(w in k.lower() for w in _SECRET_QUERY_WORDS) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
