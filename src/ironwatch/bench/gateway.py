"""``ironwatch bench gateway``: drain the backlog of an outage, and the cost of sampling a site.

1. **Drain.** A real server on a temporary data dir. The simulated site's readings of the last
   ``outage_h`` hours go into a gateway outbox the way a gateway cut off from its server stores
   them: one source read per second, each cut into its own numbered batch. Then the link "comes
   back": the gateway's sender drains the outbox through the HTTP uplink, and the clock runs until
   the last batch is acknowledged (durable on the server). The figure is the outage's length over
   the drain time; SQL must then count exactly the readings sampled.
2. **Sampling.** The whole gateway (simulator, outbox, batches, uplink, heartbeats) runs live in
   this process for ``sample_s`` seconds; its CPU time over the wall time is the share of one core.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, cast

from ironwatch.bench.ingest import (
    BenchFailed,
    Progress,
    ServerProcess,
    _eta,
    _workdir,
    sql_count,
    stderr_progress,
)
from ironwatch.errors import InvalidInput
from ironwatch.gateway.source import Historical

TENANT = "bench"
SITE = "bench-site"
GATEWAY = "gw-bench"
#: ARCHITECTURE.md: a 6-hour outage of a 550-sensor site drains at least 50 times faster than real time.
DRAIN_TARGET_X = 50.0
CPU_TARGET = 0.10


def _setup(data_dir: Path) -> tuple[str, str]:
    from ironwatch.store import Store

    store = Store(f"sqlite:///{data_dir / 'ironwatch.db'}")
    try:
        store.create_tenant(TENANT, (data_dir / "lake" / TENANT).as_uri())
        _, gateway_key = store.create_key(TENANT, "gateway", label="bench")
        _, analyst_key = store.create_key(TENANT, "analyst", label="bench")
    finally:
        store.close()
    return gateway_key, analyst_key


def _config(workdir: Path, url: str, key: str, simulator: dict[str, Any], in_flight: int) -> Any:
    from ironwatch.gateway import config as gwconfig

    doc = {
        "gateway": {"id": GATEWAY, "site": SITE, "heartbeat_interval_s": 30},
        "uplink": {"url": url, "key": key, "in_flight": in_flight, "backoff_max_s": 2.0},
        "buffer": {"path": "outbox.db", "max_bytes": 16 << 30},
        "batch": {"max_readings": 20_000, "interval_s": 1.0},
        "metrics": {"port": 0},
        "sources": [simulator],
    }
    return gwconfig.parse(doc, workdir)


def run_gateway_bench(
    *,
    sensors: int = 550,
    outage_h: float = 6.0,
    rate_per_min: float = 30.0,
    delivery: float | None = None,
    sample_s: float = 30.0,
    in_flight: int = 4,
    keep: bool = False,
    progress: Progress = stderr_progress,
) -> dict[str, Any]:
    """Run both measurements and return the JSON-ready figures."""
    if sensors < 1 or outage_h <= 0 or sample_s < 0 or in_flight < 1:
        raise InvalidInput("bench gateway", "sensors, --outage-hours and --in-flight must be positive")
    simulator: dict[str, Any] = {
        "type": "simulator",
        "sensors": sensors,
        "rate_per_min": rate_per_min,
        "faults": "default",
        "interval_s": 1.0,
    }
    if delivery is not None:
        simulator["delivery"] = delivery
    with _workdir(keep, progress) as workdir:
        data_dir = workdir / "data"
        data_dir.mkdir()
        gateway_key, analyst_key = _setup(data_dir)
        server = ServerProcess(
            data_dir, workdir / "server.log", env={"IRONWATCH_LAKE__FLUSH_INTERVAL_S": "2"}
        )
        try:
            config = _config(workdir, server.url, gateway_key, simulator, in_flight)
            drain = _drain(config, outage_h, server, analyst_key, progress)
            sampling = _sample(config, sample_s, progress) if sample_s > 0 else None
        finally:
            server.stop()
    result: dict[str, Any] = {
        "bench": "gateway",
        "sensors": sensors,
        "metrics": 17,
        "rate_per_min": rate_per_min,
        "drain": drain,
        "sampling": sampling,
        "targets": {"drain_x_realtime": DRAIN_TARGET_X, "sampling_cpu_fraction_of_core": CPU_TARGET},
    }
    result["meets_targets"] = drain["drain_x_realtime"] >= DRAIN_TARGET_X and (
        sampling is None or sampling["cpu_fraction_of_core"] < CPU_TARGET
    )
    return result


def _drain(
    config: Any, outage_h: float, server: ServerProcess, analyst_key: str, say: Progress
) -> dict[str, Any]:
    from ironwatch.gateway.agent import heartbeat_doc
    from ironwatch.gateway.config import build_source
    from ironwatch.gateway.outbox import open_outbox
    from ironwatch.gateway.sender import DeadLetters, Sender
    from ironwatch.gateway.uplink import Backoff
    from ironwatch.gateway.uplink_http import HttpUplink

    source = build_source(config.sources[0], "sources[0]", config.base_dir)
    outbox = open_outbox(config.buffer_path, gateway=GATEWAY, site=SITE, max_bytes=config.buffer_max_bytes)
    end_ms = (int(time.time() * 1000) // 1000) * 1000 - 60_000
    start_ms = end_ms - int(outage_h * 3_600_000)
    say(f"outage: sampling {outage_h:g} h of the site into the outbox, one batch per second of readings")
    t0 = time.monotonic()
    last_said = t0
    for table in cast(Historical, source).history(start_ms, end_ms, 1.0):
        outbox.add(table)
        outbox.form_batches(config.batch_max_readings, 0.0)
        if time.monotonic() - last_said > 10:
            last_said = time.monotonic()
            done = int(table.column("ts_ms")[0].as_py()) - start_ms
            eta = _eta(done, end_ms - start_ms, last_said - t0)
            say(f"  {done / 3_600_000:.2f} h of {outage_h:g} h sampled, ETA {eta}")
    fill_s = time.monotonic() - t0
    counts = outbox.counts()
    backlog = counts.buffered
    mib = counts.buffer_bytes / 2**20
    say(f"backlog: {backlog:,} readings in {counts.batches:,} batches, {mib:.0f} MiB (in {fill_s:.0f} s)")
    uplink = HttpUplink(config)
    stop = threading.Event()
    sender = Sender(
        outbox,
        uplink,
        DeadLetters(config.dead_letter_path),
        Backoff(0.05, 2.0),
        in_flight=config.uplink.in_flight,
        stop=stop,
        heartbeat=lambda: heartbeat_doc(outbox, int(time.time() * 1000), {}),
    )
    t0 = time.monotonic()
    last_said = t0
    failures_at_start = 0
    while outbox.next_batches(1):
        if not sender.drain_once() and sender.stats.failures - failures_at_start > 50:
            raise BenchFailed(f"the drain keeps failing: {sender.stats.last_error}")
        if time.monotonic() - last_said > 5:
            last_said = time.monotonic()
            done = outbox.counts().acknowledged
            say(f"  drained {done:,} of {backlog:,}, ETA {_eta(done, backlog, last_said - t0)}")
    drain_s = time.monotonic() - t0
    uplink.close()
    final = outbox.counts()
    outbox.close()
    say(f"drained in {drain_s:.1f} s; waiting for SQL to see every reading")
    deadline = time.monotonic() + 600
    stored = sql_count(server.url, analyst_key)
    while stored < final.acknowledged and time.monotonic() < deadline:
        time.sleep(1)
        stored = sql_count(server.url, analyst_key)
    visible_s = time.monotonic() - t0
    if stored != final.acknowledged or final.acknowledged != backlog or final.dropped or final.dead_lettered:
        raise BenchFailed(
            f"SQL counts {stored:,} readings; the gateway sampled {final.sampled:,}, acknowledged "
            f"{final.acknowledged:,}, dropped {final.dropped:,}, dead-lettered {final.dead_lettered:,}"
        )
    outage_s = outage_h * 3600
    return {
        "outage_s": outage_s,
        "backlog_readings": backlog,
        "backlog_batches": counts.batches,
        "backlog_bytes": counts.buffer_bytes,
        "fill_s": round(fill_s, 2),
        "drain_s": round(drain_s, 2),
        "drain_readings_per_s": round(backlog / drain_s),
        "drain_x_realtime": round(outage_s / drain_s, 1),
        "visible_in_sql_s": round(visible_s, 2),
        "sql_count": stored,
        "duplicate_batches": sender.stats.duplicates,
        "send_failures": sender.stats.failures,
    }


def _sample(config: Any, sample_s: float, say: Progress) -> dict[str, Any]:
    from ironwatch.gateway.agent import Gateway

    say(f"sampling: the whole gateway runs live for {sample_s:g} s")
    live = dataclasses.replace(config, buffer_path=config.buffer_path.with_name("live.db"))
    gateway = Gateway(live)
    runner = threading.Thread(target=gateway.run, name="bench-gateway")
    wall0, cpu0 = time.monotonic(), time.process_time()
    runner.start()
    gateway.stop.wait(sample_s)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    gateway.stop.set()
    runner.join(60)
    counts = gateway.outbox.counts()
    gateway.outbox.close()
    return {
        "seconds": round(wall, 2),
        "sampled": counts.sampled,
        "readings_per_s": round(counts.sampled / wall),
        "acknowledged": counts.acknowledged,
        "cpu_s": round(cpu, 3),
        "cpu_fraction_of_core": round(cpu / wall, 4),
    }
