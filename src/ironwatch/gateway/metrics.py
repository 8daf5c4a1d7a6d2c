"""The gateway's Prometheus endpoint: the outbox's exact counts and the link's state, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ironwatch.gateway.agent import Gateway

_COUNTERS = {
    "sampled": "Readings stored in the outbox (they count as sampled from then on).",
    "sent": "Readings in batches sent at least once.",
    "acknowledged": "Readings the server acknowledged as durable.",
    "dropped": "Readings dropped because the buffer was full (the oldest go first).",
    "dead_lettered": "Readings of batches the server refused, kept in the dead-letter file.",
}


class _Collector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Any]:
        counts = self.gateway.outbox.counts()
        labels = {"gateway": self.gateway.config.gateway, "site": self.gateway.config.site}
        names, values = list(labels), list(labels.values())
        for name, text in _COUNTERS.items():
            family = CounterMetricFamily(f"ironwatch_gateway_readings_{name}", text, labels=names)
            family.add_metric(values, getattr(counts, name))
            yield family
        gauges = {
            "buffered_readings": (counts.buffered, "Readings in the outbox, not yet acknowledged."),
            "buffered_batches": (counts.batches, "Batches formed and waiting to be sent."),
            "buffer_bytes": (counts.buffer_bytes, "Bytes the outbox holds."),
            "buffer_limit_bytes": (self.gateway.config.buffer_max_bytes, "The outbox's size limit."),
            "last_batch": (counts.last_batch, "Sequence number of the newest batch."),
            "link_up": (
                int(self.gateway.sender.stats.is_link_up),
                "1 when the last send got through.",
            ),
            "oldest_buffered_timestamp_seconds": (
                (counts.oldest_buffered_ms or 0) / 1000,
                "Event time of the oldest buffered reading (0 when empty).",
            ),
        }
        for name, (value, text) in gauges.items():
            gauge = GaugeMetricFamily(f"ironwatch_gateway_{name}", text, labels=names)
            gauge.add_metric(values, value)
            yield gauge
        stats = self.gateway.sender.stats
        for name, value, text in (
            ("send_failures", stats.failures, "Sends that failed and were retried."),
            ("duplicate_batches", stats.duplicates, "Batches the server already held."),
            (
                "number_collisions",
                stats.number_collisions,
                "Batches answered as duplicates on their first send (batch numbers reused).",
            ),
            ("rejected_readings", stats.rejected_readings, "Readings the server put in quarantine."),
            ("source_read_failures", self.gateway.sampler.read_failures, "Source reads that failed."),
            ("heartbeats", self.gateway.heartbeats_sent, "Heartbeats sent."),
        ):
            family = CounterMetricFamily(f"ironwatch_gateway_{name}", text, labels=names)
            family.add_metric(values, value)
            yield family


def serve_metrics(gateway: Gateway, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``host:port``; returns the server (``shutdown()`` stops it) and its port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(gateway))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
