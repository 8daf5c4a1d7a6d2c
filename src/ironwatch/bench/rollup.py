"""``ironwatch bench rollup``: how fast the rollup partials of raw readings are computed.

One hour of the synthetic site (550 sensors x 17 metrics at 1 Hz: 33.66M readings) is generated as
the flusher holds a raw file's rows (an Arrow table sorted by sensor, metric, ts), then the minute
and hour partials are computed from it ``runs`` times (lake.rollup.of_table, the code the flusher
and the compactor run); the median run counts. Writing the partials as Parquet is timed apart.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from ironwatch.bench.sitegen import Site
from ironwatch.lake import rollup

TARGET_ROWS_PER_S = 15_000_000
TARGET_HOUR_S = 3.0


def run_rollup_bench(*, sensors: int = 550, seconds: int = 3600, runs: int = 5) -> dict[str, Any]:
    """Time the partials of ``seconds`` seconds of ``sensors`` sensors; one JSON-able dict."""
    start_us = 1_764_000_000 // 3600 * 3600 * 1_000_000
    site = Site(sensors, start_us)
    print(f"[bench] generating {sensors} x 17 series x {seconds} s", file=sys.stderr, flush=True)
    table = site.table(0, seconds)
    rows = table.num_rows
    rollup.of_table(table.slice(0, min(rows, 100_000)))  # warm up imports and allocator
    times = []
    for n in range(max(1, runs)):
        started = time.perf_counter()
        minutes, hours = rollup.of_table(table)
        times.append(time.perf_counter() - started)
        print(f"[bench] run {n + 1}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
    started = time.perf_counter()
    encoded = len(rollup.parquet_bytes(minutes)) + len(rollup.parquet_bytes(hours))
    encode_s = time.perf_counter() - started
    median = statistics.median(times)
    hour_s = median * (sensors * 17 * 3600) / rows
    return {
        "bench": "rollup",
        "readings": rows,
        "sensors": sensors,
        "metrics": 17,
        "seconds": seconds,
        "runs": len(times),
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "rows_per_s": round(rows / median),
        "site_hour_s": round(hour_s, 3),
        "minute_partials": minutes.num_rows,
        "hour_partials": hours.num_rows,
        "partials_parquet_s": round(encode_s, 3),
        "partials_parquet_bytes": encoded,
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "target_site_hour_s": TARGET_HOUR_S,
        "meets_target": rows / median >= TARGET_ROWS_PER_S and hour_s < TARGET_HOUR_S,
    }
