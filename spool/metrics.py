"""Metrics for what applications already run, from :meth:`sqreen.Spooler.stats`.

Prometheus (``pip install 'sqreen-spool[prometheus]'``)::

    prometheus_client.REGISTRY.register(sqreen.metrics.PrometheusCollector(spooler))

OpenTelemetry (``pip install 'sqreen-spool[opentelemetry]'``)::

    sqreen.metrics.observe(spooler, opentelemetry.metrics.get_meter("sqreen"))

Both read the stats when scraped or collected (one look at the spool each time). The names
follow each library's conventions: ``sqreen_spool_events`` (gauge, by ``state``),
``sqreen_spool_oldest_pending_age_seconds``, ``sqreen_spool_delivered_events_total``,
``sqreen_spool_dropped_events_total`` and ``sqreen_spool_dropped_security_events_total`` (by
``reason``), ``sqreen_spool_failures_total`` (by ``kind``), ``sqreen_spool_file_bytes`` and
``sqreen_spool_max_bytes``,
``sqreen_spool_last_delivery_timestamp_seconds``; OpenTelemetry's are dotted
(``sqreen.spool.events``, ...) with units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .spooler import Spooler
from .stats import Stats


class PrometheusCollector:
    """A custom collector for ``prometheus_client`` (it is imported when scraped)."""

    def __init__(self, spooler: Spooler) -> None:
        self._spooler = spooler

    def describe(self) -> list[Any]:
        return []  # the families are made at each scrape: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._spooler.stats()
        events = GaugeMetricFamily(
            "sqreen_spool_events", "Events in the spool, by state.", labels=["state"]
        )
        for state, n in (("pending", stats.pending), ("leased", stats.leased),
                         ("rejected", stats.rejected)):  # fmt: skip
            events.add_metric([state], n)
        yield events
        yield GaugeMetricFamily(
            "sqreen_spool_oldest_pending_age_seconds",
            "How long the oldest pending event has waited (0 when none is pending).",
            value=stats.oldest_pending_age or 0.0,
        )
        yield CounterMetricFamily(
            "sqreen_spool_delivered_events", "Events delivered.", value=stats.delivered
        )
        for name, text, label, values in _by_label(stats):
            family = CounterMetricFamily(name, text, labels=[label])
            for key, n in values.items():
                family.add_metric([key], n)
            yield family
        yield GaugeMetricFamily("sqreen_spool_file_bytes", "The spool's files.",
                                value=stats.file_bytes)  # fmt: skip
        yield GaugeMetricFamily("sqreen_spool_max_bytes", "The spool's size bound.",
                                value=stats.max_bytes)  # fmt: skip
        at = (stats.last_delivery or {}).get("at")
        if isinstance(at, int | float):
            yield GaugeMetricFamily(
                "sqreen_spool_last_delivery_timestamp_seconds",
                "When the last delivery was attempted.",
                value=at,
            )


def _by_label(stats: Stats) -> list[tuple[str, str, str, dict[str, int]]]:
    return [
        ("sqreen_spool_dropped_events", "Events dropped, by reason.", "reason", stats.dropped),
        ("sqreen_spool_dropped_security_events", "Security events among the drops, by reason.",
         "reason", stats.dropped_security),
        ("sqreen_spool_failures", "Storage and delivery failures, by kind.", "kind",
         stats.failures),
    ]  # fmt: skip


def observe(spooler: Spooler, meter: Any) -> None:
    """Register OpenTelemetry observable instruments on ``meter`` for ``spooler``'s stats."""
    from opentelemetry.metrics import Observation

    def read(pick: Callable[[Stats], Iterable[tuple[float, dict[str, str]]]]) -> Any:
        def callback(options: Any) -> list[Any]:
            return [Observation(value, labels) for value, labels in pick(spooler.stats())]

        return callback

    meter.create_observable_gauge(
        "sqreen.spool.events", [read(lambda s: [
            (s.pending, {"state": "pending"}), (s.leased, {"state": "leased"}),
            (s.rejected, {"state": "rejected"})])], unit="{event}",
        description="Events in the spool, by state.",
    )  # fmt: skip
    meter.create_observable_gauge(
        "sqreen.spool.oldest_pending_age", [read(lambda s: [(s.oldest_pending_age or 0.0, {})])],
        unit="s", description="How long the oldest pending event has waited.",
    )  # fmt: skip
    meter.create_observable_counter(
        "sqreen.spool.delivered", [read(lambda s: [(s.delivered, {})])], unit="{event}",
        description="Events delivered.",
    )  # fmt: skip
    for name, label, unit, text in (
        ("dropped", "reason", "{event}", "Events dropped, by reason."),
        ("dropped_security", "reason", "{event}", "Security events among the drops, by reason."),
        ("failures", "kind", "{failure}", "Failures, by kind."),
    ):
        meter.create_observable_counter(
            f"sqreen.spool.{name}",
            [read(_labelled(name, label))], unit=unit, description=text,
        )  # fmt: skip
    meter.create_observable_gauge(
        "sqreen.spool.file_size", [read(lambda s: [(s.file_bytes, {})])], unit="By",
        description="The spool's files.",
    )  # fmt: skip


def _labelled(name: str, label: str) -> Callable[[Stats], Iterable[tuple[float, dict[str, str]]]]:
    """The values of a by-key figure of the stats (``dropped``, ``failures``), labelled."""

    def pick(stats: Stats) -> Iterable[tuple[float, dict[str, str]]]:
        values: dict[str, int] = getattr(stats, name)
        return [(n, {label: key}) for key, n in values.items()]

    return pick
