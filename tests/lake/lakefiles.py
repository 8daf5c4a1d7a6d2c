"""Raw files made the way the flusher makes them, and the answers the SQL views must give about them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from ironwatch import lake
from ironwatch.lake import Root
from ironwatch.model import TS_TYPE

#: Two whole hours, three days ago: closed for compaction whatever the time of the test.
HOUR = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
HOUR_US = int(HOUR.timestamp()) * 1_000_000


def readings(
    rng: np.random.Generator,
    n: int,
    *,
    start_us: int = HOUR_US,
    span_s: float = 7200.0,
    sensors: Sequence[str] = ("s-1", "s-2", "s-10"),
    metrics: Sequence[str] = ("rpm", "temperature_c"),
    sites: Sequence[str] = ("hall-a",),
    batch: int = 1,
) -> pa.Table:
    """``n`` readings at random moments (in whole milliseconds) in ``[start, start + span)``."""
    ts = start_us + rng.integers(0, int(span_s * 1000), n) * 1000
    return table(
        ts,
        rng.choice(list(sites), n),
        rng.choice(list(sensors), n),
        rng.choice(list(metrics), n),
        np.round(rng.normal(50, 20, n), 3),
        batch=batch,
    )


def table(
    ts_us: Any, site: Any, sensor: Any, metric: Any, value: Any, *, gateway: str = "gw-1", batch: int = 1
) -> pa.Table:
    """A flusher table (readings with a ``site`` column) from columns."""
    n = len(ts_us)
    return pa.table(
        {
            "site": pa.array(list(site), pa.string()),
            "ts": pa.array(np.asarray(ts_us, dtype=np.int64)).cast(TS_TYPE),
            "sensor": pa.array(list(sensor), pa.string()),
            "metric": pa.array(list(metric), pa.string()),
            "value": pa.array(np.asarray(value, dtype=np.float64)),
            "gateway": pa.array([gateway] * n, pa.string()),
            "batch": pa.array(np.full(n, batch, dtype=np.int64)),
            "received_at": pa.array(np.asarray(ts_us, dtype=np.int64) + 5_000_000).cast(TS_TYPE),
        }
    )


def write(root: Root, tables: Sequence[pa.Table], writer: str = "w1") -> list[str]:
    """Write tables as consecutive log segments would be written; the raw paths written."""
    out = []
    for seq, t in enumerate(tables):
        out += lake.write_readings(root, t, f"{writer}-{seq:012d}")
    return out


def sql(root: Root, text: str) -> list[tuple[Any, ...]]:
    """Rows of an answer of the sandboxed SQL path, as tuples."""
    answer = lake.query.run(root, text)
    return list(zip(*(c.to_pylist() for c in answer.columns), strict=True))


#: Every reading, as a multiset (order-free), through the readings view.
ALL_READINGS = (
    "SELECT site, sensor, metric, ts, value, gateway, batch, received_at FROM readings ORDER BY ALL"
)

#: The minute rollups computed straight from raw readings: what rollup_1m must answer.
MINUTES_FROM_RAW = """
SELECT site, sensor, metric, date_trunc('minute', ts) AS minute, count(*) AS count, avg(value) AS mean,
       min(value) AS min, max(value) AS max, arg_max(value, (ts, value)) AS last,
       stddev_samp(value) AS std, min(ts) AS first_ts, max(ts) AS last_ts
FROM readings GROUP BY ALL ORDER BY site, sensor, metric, minute
"""
MINUTES = (
    "SELECT site, sensor, metric, minute, count, mean, min, max, last, std, first_ts, last_ts "
    "FROM rollup_1m ORDER BY site, sensor, metric, minute"
)
HOURS_FROM_RAW = (
    MINUTES_FROM_RAW.replace("'minute'", "'hour'")
    .replace("AS minute", "AS hour")
    .replace("metric, minute", "metric, hour")
)
HOURS = (
    "SELECT site, sensor, metric, hour, count, mean, min, max, last, std, first_ts, last_ts "
    "FROM rollup_1h ORDER BY site, sensor, metric, hour"
)


def assert_rollups_match_raw(root: Root) -> None:
    """rollup_1m and rollup_1h agree with aggregates computed from the raw readings themselves."""
    for rolled, raw in ((MINUTES, MINUTES_FROM_RAW), (HOURS, HOURS_FROM_RAW)):
        got, want = sql(root, rolled), sql(root, raw)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g[:5] == w[:5] and g[6:9] == w[6:9] and g[10:] == w[10:], (g, w)  # exact
            assert abs(g[5] - w[5]) <= 1e-9 * max(1.0, abs(w[5])), (g, w)  # mean
            if w[9] is None:
                assert g[9] is None, (g, w)
            else:
                assert abs(g[9] - w[9]) <= 1e-6 * max(1.0, abs(w[9])), (g, w)  # std
