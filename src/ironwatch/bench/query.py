"""``ironwatch bench query``: one sensor-metric-day out of a week-long lake, through the SQL sandbox.

The lake is a site of 550 sensors x 17 metrics at 1 Hz over ``days`` days (a week: 5.65 billion
readings), written hour by hour straight as compacted files with their rollup partials (the
compactor's own writer; generating it through HTTP would take hours), with progress and time left on
stderr. ``--lake-dir`` keeps it for the next run, which only adds missing hours. Then ``queries``
random (sensor, metric, day) are read with ``lake.query.run`` through a ``lake.Pool`` made with the
server's defaults (``query.idle_sandboxes``...), which is the path of ``POST /api/v1/query``: a
sandboxed DuckDB of the tenant lent by the pool, its ``readings`` view checked against the files
visible now, the answer as Arrow. The first query opens the sandbox (and warms the page cache), so it
is not timed; ``sandboxes_created`` in the answer says how many DuckDBs the run opened.
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ironwatch import lake
from ironwatch.bench.sitegen import SITE, Site
from ironwatch.errors import IronwatchError
from ironwatch.lake import compacted, compaction, rollup
from ironwatch.lake.root import Root

#: Monday 2026-11-02 00:00 UTC: the first hour of the lake.
START_US = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp()) * 1_000_000
HOUR_US = 3_600_000_000
SENSORS_PER_CHUNK = 25
TARGET_P50_MS = 50.0
TARGET_P95_MS = 100.0


class BenchFailed(IronwatchError):
    """A query answered something else than the generated readings."""

    code = "bench_failed"


def _say(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _hour_paths(hour_us: int) -> tuple[str, str, str]:
    name = f"{compacted.PREFIX}bench-{datetime.fromtimestamp(hour_us / 1e6, UTC):%Y%m%d%H}"
    return (
        lake.readings_path(SITE, hour_us, name),
        rollup.rollup_1m_path(SITE, hour_us, name),
        rollup.rollup_1h_path(SITE, hour_us, name),
    )


def write_hour(root: Root, site: Site, hour_us: int, policy: compaction.Policy) -> int:
    """Write one compacted hour and its partials; returns the readings written."""
    raw, minute_path, hour_path = _hour_paths(hour_us)
    first_step = (hour_us - site.start_us) // 1_000_000
    with root.write_stream(raw) as sink:
        writer = compacted.Writer(
            sink,
            sensors=site.sensor_names,
            metrics=site.metric_names,
            gateways=site.gateway_names,
            row_group_rows=policy.row_group_rows,
            compression_level=policy.compression_level,
        )
        for lo in range(0, site.sensors, SENSORS_PER_CHUNK):
            writer.add(site.chunk(first_step, 3600, lo, min(site.sensors, lo + SENSORS_PER_CHUNK)))
        minutes, hours = writer.close()
    root.write(minute_path, rollup.parquet_bytes(minutes))
    root.write(hour_path, rollup.parquet_bytes(hours))
    return writer.rows


def build(root: Root, site: Site, hours: int, policy: compaction.Policy) -> dict[str, Any]:
    """Write every hour of the lake that is not complete yet, with progress and time left."""
    started = time.monotonic()
    written = 0
    todo = [START_US + h * HOUR_US for h in range(hours)]
    todo = [h for h in todo if not all(root.exists(p) for p in _hour_paths(h))]
    for n, hour_us in enumerate(todo, 1):
        written += write_hour(root, site, hour_us, policy)
        spent = time.monotonic() - started
        _say(
            f"lake: hour {n} of {len(todo)} written ({written:,} readings), "
            f"{spent / n * (len(todo) - n):.0f} s left"
        )
    return {"hours_built": len(todo), "build_s": round(time.monotonic() - started, 1)}


def run_query_bench(
    *, days: int = 7, sensors: int = 550, queries: int = 60, lake_dir: str | None = None
) -> dict[str, Any]:
    """Build (or reuse) the lake, then time ``queries`` sensor-metric-day reads."""
    folder = Path(lake_dir) if lake_dir else Path(tempfile.mkdtemp(prefix="ironwatch-bench-query-"))
    try:
        root = lake.open_root(str(folder))
        site = Site(sensors, START_US)
        policy = compaction.Policy()
        built = build(root, site, days * 24, policy)
        files = lake.visible_files(root, "readings")
        size = sum((folder / f).stat().st_size for f in files)
        readings = days * 24 * 3600 * sensors * 17
        rng = random.Random(1124)
        metrics = site.metric_names.to_pylist()
        latencies = []
        with lake.Pool() as pool:  # the server's defaults
            for n in range(queries + 1):
                sensor, metric = f"s-{rng.randrange(sensors):04d}", rng.choice(metrics)
                day = datetime.fromtimestamp(START_US / 1e6 + rng.randrange(days) * 86400, UTC)
                sql = (
                    f"SELECT ts, value FROM readings WHERE site = '{SITE}' AND date = DATE '{day:%Y-%m-%d}' "
                    f"AND sensor = '{sensor}' AND metric = '{metric}' ORDER BY ts"
                )
                started = time.perf_counter()
                answer = lake.query.run(root, sql, pool=pool)
                elapsed_ms = (time.perf_counter() - started) * 1000
                if answer.num_rows != 86_400:
                    raise BenchFailed(f"{sql} answered {answer.num_rows} rows, not 86400")
                if n:  # the first query opens the sandbox, warms the page cache and DuckDB's code paths
                    latencies.append(elapsed_ms)
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        p50, p95 = statistics.median(latencies), cuts[94]
        return {
            "bench": "query",
            "days": days,
            "sensors": sensors,
            "metrics": 17,
            "readings": readings,
            "raw_files": len(files),
            "raw_bytes": size,
            "bytes_per_reading": round(size / readings, 3),
            **built,
            "queries": len(latencies),
            "sandboxes_created": pool.created,
            "rows_per_query": 86_400,
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "max_ms": round(max(latencies), 1),
            "target_p50_ms": TARGET_P50_MS,
            "target_p95_ms": TARGET_P95_MS,
            "meets_target": p50 <= TARGET_P50_MS and p95 <= TARGET_P95_MS,
        }
    finally:
        if not lake_dir:
            shutil.rmtree(folder, ignore_errors=True)
