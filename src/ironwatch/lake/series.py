"""One series from the lake: a site's sensor and metric over a time range, raw or rolled up.

Only the partitions that can hold the range are touched. Raw files are found by listing exactly the
``readings/site=S/date=D/hour=H/`` folders of the range (never the whole lake), and DuckDB reads
those files with the sensor, metric and time filters pushed into the Parquet scan, so row groups
of other sensors are skipped by their statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironwatch.errors import QueryError
from ironwatch.lake.root import Root

log = logging.getLogger(__name__)

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US

#: Raw points: epoch microseconds and values.
POINTS_SCHEMA = pa.schema([("ts", pa.int64()), ("value", pa.float64())])
#: Buckets: start in epoch microseconds, count, mean, min, max.
BUCKETS_SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
    ]
)


def _hours(start_us: int, end_us: int) -> Iterator[datetime]:
    hour = start_us // HOUR_US * HOUR_US
    while hour < end_us:
        yield datetime.fromtimestamp(hour / 1_000_000, UTC)
        hour += HOUR_US


def raw_files(root: Root, site: str, start_us: int, end_us: int) -> list[str]:
    """Raw files of ``site`` whose hour partition overlaps ``[start_us, end_us)``."""
    files: list[str] = []
    for hour in _hours(start_us, end_us):
        folder = f"readings/site={site}/date={hour:%Y-%m-%d}/hour={hour:%H}"
        files.extend(p for p in root.list(folder) if p.endswith(".parquet"))
    return files


def _connect(threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET memory_limit = '{memory_limit.replace(chr(39), '')}'")
    con.execute("SET temp_directory = ''")
    return con


def read_raw(
    root: Root,
    site: str,
    sensor: str,
    metric: str,
    start_us: int,
    end_us: int,
    *,
    limit: int | None = None,
    threads: int = 1,
    memory_limit: str = "256MB",
) -> pa.Table:
    """Raw readings of one sensor and metric with ``start_us <= ts < end_us`` (``POINTS_SCHEMA``).

    With ``limit``, at most that many rows, in no particular order (a caller that gets ``limit`` rows
    knows there may be more); without, sorted by ``ts``.
    """
    sql = (
        "SELECT epoch_us(ts) AS ts, value FROM read_parquet($files) WHERE sensor = $sensor "
        "AND metric = $metric AND ts >= make_timestamp($start)::TIMESTAMPTZ "
        "AND ts < make_timestamp($end)::TIMESTAMPTZ"
    )
    params: dict[str, object] = {"sensor": sensor, "metric": metric, "start": start_us, "end": end_us}
    if limit is not None:
        sql += " LIMIT $limit"
        params["limit"] = limit
    # Compaction may retire a file between listing and reading it: list again once.
    for attempt in (1, 2):
        files = raw_files(root, site, start_us, end_us)
        if not files:
            return POINTS_SCHEMA.empty_table()
        con = _connect(threads, memory_limit)
        try:
            params["files"] = [root.duckdb_glob(f) for f in files]
            table = con.sql(sql, params=params).to_arrow_table().cast(POINTS_SCHEMA)
            break
        except duckdb.IOException as exc:
            if attempt == 2:
                raise QueryError(f"cannot read raw readings of site {site}: {exc}") from exc
            log.info("series: a raw file went away while reading (%s); listing again", exc)
        except duckdb.Error as exc:
            raise QueryError(f"cannot read raw readings of site {site}: {exc}") from exc
        finally:
            con.close()
    return table if limit is not None else table.sort_by("ts")


def bucket(points: pa.Table, width_us: int) -> pa.Table:
    """Points (``POINTS_SCHEMA``) aggregated into buckets of ``width_us`` (``BUCKETS_SCHEMA``), by start."""
    if points.num_rows == 0:
        return BUCKETS_SCHEMA.empty_table()
    start = pc.multiply(pc.divide(points["ts"], width_us), width_us)
    grouped = (
        pa.table({"ts": start, "value": points["value"]})
        .group_by("ts", use_threads=False)
        .aggregate([("value", "count"), ("value", "mean"), ("value", "min"), ("value", "max")])
        .rename_columns(
            {"value_count": "count", "value_mean": "mean", "value_min": "min", "value_max": "max"}
        )
    )
    return grouped.select(BUCKETS_SCHEMA.names).cast(BUCKETS_SCHEMA).sort_by("ts")


def combine(buckets: pa.Table, width_us: int) -> pa.Table:
    """Buckets (``BUCKETS_SCHEMA``) merged into wider buckets of ``width_us``, weighting means by count."""
    if buckets.num_rows == 0:
        return BUCKETS_SCHEMA.empty_table()
    start = pc.multiply(pc.divide(buckets["ts"], width_us), width_us)
    count = buckets["count"]
    weighted = pc.multiply(buckets["mean"], count.cast(pa.float64()))
    grouped = (
        pa.table({"ts": start, "count": count, "sum": weighted, "min": buckets["min"], "max": buckets["max"]})
        .group_by("ts", use_threads=False)
        .aggregate([("count", "sum"), ("sum", "sum"), ("min", "min"), ("max", "max")])
    )
    total = grouped["count_sum"]
    mean = pc.divide(grouped["sum_sum"], total.cast(pa.float64()))
    return pa.table(
        [grouped["ts"], total, mean, grouped["min_min"], grouped["max_max"]], schema=BUCKETS_SCHEMA
    ).sort_by("ts")


def as_buckets(points: pa.Table) -> pa.Table:
    """Raw points as one-reading buckets: mean = min = max = value, count = 1."""
    value = points["value"]
    ones = pa.array(np.ones(points.num_rows, dtype=np.int64))
    return pa.table([points["ts"], ones, value, value, value], schema=BUCKETS_SCHEMA)
