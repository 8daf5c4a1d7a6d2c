"""Prometheus metrics of the ingest pipeline, in a registry owned by one server (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Counters and gauges served at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.readings_accepted = Counter(
            "ironwatch_readings_accepted", "Readings stored", ["transport"], registry=r
        )
        self.readings_rejected = Counter(
            "ironwatch_readings_rejected", "Readings sent to quarantine", ["transport"], registry=r
        )
        self.readings_duplicate = Counter(
            "ironwatch_readings_duplicate", "Batches answered as duplicates", ["transport"], registry=r
        )
        self.batches = Counter(
            "ironwatch_batches",
            "Batches by outcome (stored, duplicate, invalid)",
            ["transport", "outcome"],
            registry=r,
        )
        self.messages_quarantined = Counter(
            "ironwatch_messages_quarantined",
            "Whole messages that could not be decoded",
            ["transport"],
            registry=r,
        )
        self.mqtt_messages_dropped = Counter(
            "ironwatch_mqtt_messages_dropped",
            "MQTT messages acknowledged without a tenant root to keep them in (unknown tenant, bad topic)",
            ["reason"],
            registry=r,
        )
        self.worker_groups = Counter(
            "ironwatch_ingest_worker_groups",
            "Groups of batches offered to ingest workers, by what became of them: written as the worker "
            "prepared them, trimmed to the new batches (a duplicate or refused batch among them), or "
            "decoded in the server because no worker could take them",
            ["path"],
            registry=r,
        )
        self.arrow_groups = Counter(
            "ironwatch_ingest_arrow_groups",
            "Groups of batches decoded in the server all at once by Arrow's JSON reader (large groups "
            "of well-formed envelopes, every reading good), by transport; the others are decoded "
            "envelope by envelope",
            ["transport"],
            registry=r,
        )
        self.group_batches = Histogram(
            "ironwatch_ingest_group_batches",
            "Batches handed to the pipeline together (a burst of MQTT messages, HTTP requests read "
            "in one turn of the event loop), refused ones included; the new batches of each tenant "
            "in a group are decoded in one pass and written as one log record",
            ["transport"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.lake_bytes_flushed = Counter(
            "ironwatch_lake_log_bytes_flushed", "Bytes of log segments turned into Parquet", registry=r
        )
        self.lake_files_written = Counter("ironwatch_lake_files_written", "Parquet files written", registry=r)
        self.ack_seconds = Histogram(
            "ironwatch_ingest_ack_seconds",
            "Time from receiving a batch to acknowledging it durable",
            ["transport"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.queue_depth_bytes = Gauge(
            "ironwatch_ingest_queue_depth_bytes", "Bytes waiting for the disk or for the lake", registry=r
        )
        self.segments_pending = Gauge(
            "ironwatch_lake_segments_pending", "Log segments not yet written to the lake", registry=r
        )

    def watch_queue(self, depth_bytes: Callable[[], float], segments: Callable[[], float]) -> None:
        """Read the queue gauges from live callables at scrape time."""
        self.queue_depth_bytes.set_function(depth_bytes)
        self.segments_pending.set_function(segments)
