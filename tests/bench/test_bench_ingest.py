"""The ingest benchmark in a tiny form, so that it cannot rot: a real server, real client processes."""

from __future__ import annotations

from conftest import require_tool
from ironwatch.bench import run_ingest_bench

KEYS = {
    "readings_per_s",
    "p50_ack_ms",
    "p99_ack_ms",
    "peak_rss_mib",
    "bytes_per_reading",
    "stored",
    "sql_visible_s",
    "server_cpu_s",
}


def test_bench_ingest_counts_every_reading() -> None:
    result = run_ingest_bench(
        transport="http",
        readings=20_000,
        batch=1000,
        clients=2,
        form="rows",
        flush_interval_s=0.5,
        progress=None,
    )
    assert result.keys() >= KEYS
    assert result["stored"] == 20_000
    assert result["readings_per_s"] > 0
    assert 0 < result["p50_ack_ms"] <= result["p99_ack_ms"]
    assert result["peak_rss_mib"] > 0
    by_process = result["peak_rss_mib_by_process"]
    assert set(by_process) == {"server", "lake_writer"}
    # Each process's own peak is part of the tree's, which is at most their sum.
    assert 0 < max(by_process.values()) <= result["peak_rss_mib"] <= sum(by_process.values()) + 0.1
    assert 0 < result["bytes_per_reading"] < 100


def test_bench_ingest_columns_with_an_uneven_split() -> None:
    result = run_ingest_bench(
        transport="http",
        readings=12_345,
        batch=500,
        clients=3,
        form="columns",
        flush_interval_s=0.5,
        progress=None,
    )
    assert result["stored"] == 12_345
    assert result["form"] == "columns"


def test_bench_ingest_over_mqtt_with_an_ingest_worker() -> None:
    require_tool("mosquitto", "/usr/sbin/mosquitto")
    result = run_ingest_bench(
        transport="mqtt",
        readings=30_000,
        batch=100,
        clients=2,
        form="columns",
        flush_interval_s=0.5,
        workers=1,
        progress=None,
    )
    assert result["stored"] == 30_000
    assert result["ack_is"] == "broker PUBACK (MQTT)"
    assert result["ingest_workers"] == 1
    assert set(result["peak_rss_mib_by_process"]) == {"server", "lake_writer", "ingest_worker"}
    # Groups went to the worker: the server's own count (30,000 readings in 300 messages form groups).
    assert result["worker_groups"] > 0
    # One PUBACK latency per message, measured from publish to PUBACK with up to 16 in flight.
    assert 0 < result["p50_ack_ms"] <= result["p99_ack_ms"] <= result["max_ack_ms"]
