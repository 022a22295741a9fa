"""The flusher a spooler needs, made on demand: the delivery stack (tenacity, httpx or
nats-py) is imported only by a spooler that delivers, never by ``import sqreen``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from ..health import Health
from ..storage.outbox import Outbox
from ..urls import is_nats
from .sink import Sink

if TYPE_CHECKING:
    from .flusher import Flusher


def make_flusher(
    settings: Settings, outbox: Outbox, health: Health, sink: Sink | None = None
) -> Flusher | None:
    """A flusher to ``sink``, else to ``settings.url`` (an HTTP collector or NATS servers), or
    None when there is neither (then nothing is imported)."""
    if sink is None:
        if settings.url is None:
            return None
        sink = _sink_for(settings, settings.url)
    from .flusher import Flusher  # tenacity: only now

    return Flusher(outbox, settings, sink, health)


def _sink_for(settings: Settings, url: str) -> Sink:
    """The sink a URL names; its client (httpx or nats-py) is imported only now."""
    from .. import __version__

    agent = f"sqreen-spool/{__version__}"
    if is_nats(url):
        from .jetstream import JetStreamSink

        return JetStreamSink(settings, agent)
    from .http import Transport

    return Transport(settings, agent)
