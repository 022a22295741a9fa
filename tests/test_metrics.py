"""Spooler.stats() and its adapters, against the real libraries: a Prometheus scrape over HTTP,
the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import prometheus_client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

import sqreen
from sqreen.delivery.sink import MemorySink
from sqreen.metrics import PrometheusCollector, observe


def filled(spool_path: Path) -> sqreen.Spooler:
    """5 events delivered, then 3 pending, tracked by a process with nothing to deliver to.

    The shipper is closed before the 3 are tracked: its delivery thread's first run could
    otherwise still be under way and ship one of them."""
    with sqreen.Spooler(path=spool_path, sink=MemorySink(), heartbeat_delay=3600) as shipper:
        for i in range(5):
            assert shipper.track("delivered", {"properties": {"i": i}})
        while shipper.flush().pending:
            pass
    spooler = sqreen.Spooler(path=spool_path)
    for i in range(3):
        assert spooler.track("waiting", {"properties": {"i": i}})
    return spooler


def test_stats(spool_path: Path) -> None:
    spooler = filled(spool_path)
    stats = spooler.stats()
    assert (stats.pending, stats.leased, stats.rejected, stats.delivered) == (3, 0, 0, 5)
    assert stats.oldest_pending_age is not None and 0 <= stats.oldest_pending_age < 60
    assert stats.dropped == {"age": 0, "size": 0, "rejected": 0, "purged": 0}
    assert stats.file_bytes > 0 and stats.max_bytes == spooler.settings.max_bytes
    assert stats.last_delivery is not None and stats.last_delivery["outcome"] == "delivered"
    spooler.close()


def test_a_prometheus_scrape_over_http(spool_path: Path) -> None:
    spooler = filled(spool_path)
    registry = prometheus_client.CollectorRegistry()
    registry.register(PrometheusCollector(spooler))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.shutdown()
        thread.join(5)
        spooler.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("sqreen_spool_events", (("state", "pending"),))] == 3
    assert samples[("sqreen_spool_delivered_events_total", ())] == 5
    assert samples[("sqreen_spool_dropped_events_total", (("reason", "size"),))] == 0
    assert samples[("sqreen_spool_file_bytes", ())] > 0
    assert ("sqreen_spool_last_delivery_timestamp_seconds", ()) in samples


def test_opentelemetry_observable_instruments(spool_path: Path) -> None:
    spooler = filled(spool_path)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    observe(spooler, provider.get_meter("sqreen"))
    data = reader.get_metrics_data()
    points = {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    provider.shutdown()
    spooler.close()
    assert points[("sqreen.spool.events", (("state", "pending"),))] == 3
    assert points[("sqreen.spool.delivered", ())] == 5
    assert points[("sqreen.spool.file_size", ())] > 0
