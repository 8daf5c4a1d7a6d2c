"""Rollups as mergeable partial aggregates, one set per raw file.

Each raw file ``readings/site=S/date=D/hour=H/NAME.parquet`` has two partial files of the same name:
``rollup_1m/site=S/date=D/hour=H/NAME.parquet`` (one row per sensor, metric and minute) and
``rollup_1h/site=S/month=M/date=D/hour=H/NAME.parquet`` (one row per sensor and metric). A row holds
``count``, ``sum``, ``min``, ``max``, ``first_ts``, ``last_ts``, ``last`` (the value at ``last_ts``;
the largest of them if several readings share that instant)
and ``m2`` (the sum of squared deviations from the partial's own mean). The views ``rollup_1m`` and
``rollup_1h`` merge the partials of every file at query time (lake/views.py), so a late reading, which
lands in a raw file of its own, corrects the rollups of its minute simply by adding a partial, and a
file written twice (a replayed log segment) is one file with one partial.

Partials are computed from rows already sorted by sensor, metric and ts, with numpy reductions over
the runs of equal (sensor, metric, bucket): no Python loop per reading.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ironwatch.lake.root import Root
from ironwatch.model import NAME_TYPE, TS_TYPE

MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000
#: Rows per block of the computation (whole series; the temporaries fit in the CPU cache).
CHUNK_ROWS = 1 << 16

#: Columns of a partial file; ``bucket`` is the start of the minute (1m) or hour (1h).
PARTIAL_SCHEMA = pa.schema(
    [
        ("sensor", NAME_TYPE),
        ("metric", NAME_TYPE),
        ("bucket", TS_TYPE),
        ("count", pa.int64()),
        ("sum", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("first_ts", TS_TYPE),
        ("last_ts", TS_TYPE),
        ("last", pa.float64()),
        ("m2", pa.float64()),
    ]
)


def rollup_1m_path(site: str, hour_us: int, name: str) -> str:
    """``rollup_1m/site=S/date=YYYY-MM-DD/hour=HH/NAME.parquet``: the minute partials of one raw file."""
    moment = datetime.fromtimestamp(hour_us / 1_000_000, UTC)
    return f"rollup_1m/site={site}/date={moment:%Y-%m-%d}/hour={moment:%H}/{name}.parquet"


def rollup_1h_path(site: str, hour_us: int, name: str) -> str:
    """``rollup_1h/site=S/month=YYYY-MM/date=YYYY-MM-DD/hour=HH/NAME.parquet``: the hour partial."""
    moment = datetime.fromtimestamp(hour_us / 1_000_000, UTC)
    return (
        f"rollup_1h/site={site}/month={moment:%Y-%m}/date={moment:%Y-%m-%d}/hour={moment:%H}/{name}.parquet"
    )


@dataclasses.dataclass(frozen=True)
class Partials:
    """Partial aggregates as numpy columns; ``sensor`` and ``metric`` are codes into the dictionaries."""

    sensor: np.ndarray
    metric: np.ndarray
    bucket: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    last: np.ndarray
    m2: np.ndarray

    def __len__(self) -> int:
        return len(self.count)

    def table(self, sensors: pa.Array, metrics: pa.Array) -> pa.Table:
        """The partials as a table of :data:`PARTIAL_SCHEMA`, codes resolved through the dictionaries."""

        def names(codes: np.ndarray, dictionary: pa.Array) -> pa.Array:
            return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary)

        def stamp(us: np.ndarray) -> pa.Array:
            return pa.array(us, pa.int64()).cast(TS_TYPE)

        columns = [
            names(self.sensor, sensors),
            names(self.metric, metrics),
            stamp(self.bucket),
            pa.array(self.count),
            pa.array(self.sum),
            pa.array(self.min),
            pa.array(self.max),
            stamp(self.first_ts),
            stamp(self.last_ts),
            pa.array(self.last),
            pa.array(self.m2),
        ]
        return pa.Table.from_arrays(columns, schema=PARTIAL_SCHEMA)


def _edges(keys: list[np.ndarray]) -> np.ndarray:
    """Start of each run of equal keys, then the length: ``[0, s1, s2, ..., n]``."""
    n = len(keys[0])
    change = np.zeros(n - 1, dtype=bool)
    for k in keys:
        change |= k[1:] != k[:-1]
    return np.concatenate(([0], np.flatnonzero(change) + 1, [n]))


def from_readings(
    ts_us: np.ndarray, sensor: np.ndarray, metric: np.ndarray, value: np.ndarray, bucket_us: int
) -> Partials:
    """Partials per (sensor, metric, bucket) of readings sorted by sensor, metric and ts."""
    n = len(ts_us)
    if n == 0:
        return empty()
    # Work through blocks of whole series of about CHUNK_ROWS rows, so that the temporaries stay in
    # the CPU cache: on whole arrays every step would be bound by memory bandwidth.
    series_edges = _edges([sensor, metric])
    cuts = series_edges[np.unique(np.searchsorted(series_edges, np.arange(0, n, CHUNK_ROWS)))]
    cuts = np.unique(np.concatenate((cuts, [n])))
    parts = [
        _block(ts_us[a:b], sensor[a:b], metric[a:b], value[a:b], bucket_us)
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True)
    ]
    return concat(parts)


def _block(
    ts_us: np.ndarray, sensor: np.ndarray, metric: np.ndarray, value: np.ndarray, bucket_us: int
) -> Partials:
    bucket = ts_us // bucket_us
    bucket *= bucket_us
    edges = _edges([sensor, metric, bucket])
    starts, ends = edges[:-1], edges[1:]
    count = np.diff(edges)
    total = np.add.reduceat(value, starts)
    dev = value - np.repeat(total / count, count)
    dev *= dev
    last = value[ends - 1]
    # Several readings at the latest instant of a bucket (rare): the largest value is the last, as
    # the views decide between partials, so that the answer does not depend on how files are split.
    for i in np.flatnonzero((count > 1) & (ts_us[ends - 1] == ts_us[np.maximum(ends - 2, 0)])).tolist():
        first = int(np.searchsorted(ts_us[starts[i] : ends[i]], ts_us[ends[i] - 1])) + int(starts[i])
        last[i] = value[first : ends[i]].max()
    return Partials(
        sensor=sensor[starts],
        metric=metric[starts],
        bucket=bucket[starts],
        count=count,
        sum=total,
        min=np.minimum.reduceat(value, starts),
        max=np.maximum.reduceat(value, starts),
        first_ts=ts_us[starts],
        last_ts=ts_us[ends - 1],
        last=last,
        m2=np.add.reduceat(dev, starts),
    )


def concat(parts: list[Partials]) -> Partials:
    """Partials one after the other (in sort order)."""
    if len(parts) == 1:
        return parts[0]
    fields = [f.name for f in dataclasses.fields(Partials)]
    return Partials(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})


def merge(parts: Partials, bucket_us: int) -> Partials:
    """Merge partials sorted by sensor, metric and bucket into coarser buckets (minutes into hours).

    ``m2`` merges with the parallel-variance formula: the sum of the parts' ``m2`` plus each part's
    count times the squared distance of its mean from the merged mean.
    """
    if len(parts) == 0:
        return empty()
    bucket = parts.bucket // bucket_us * bucket_us
    edges = _edges([parts.sensor, parts.metric, bucket])
    starts, ends = edges[:-1], edges[1:]
    count = np.add.reduceat(parts.count, starts)
    total = np.add.reduceat(parts.sum, starts)
    spread = parts.sum / parts.count - np.repeat(total / count, np.diff(edges))
    # Within a (sensor, metric) the parts are in time order, so the last part holds the last value.
    return Partials(
        sensor=parts.sensor[starts],
        metric=parts.metric[starts],
        bucket=bucket[starts],
        count=count,
        sum=total,
        min=np.minimum.reduceat(parts.min, starts),
        max=np.maximum.reduceat(parts.max, starts),
        first_ts=parts.first_ts[starts],
        last_ts=parts.last_ts[ends - 1],
        last=parts.last[ends - 1],
        m2=np.add.reduceat(parts.m2 + parts.count * spread * spread, starts),
    )


def empty() -> Partials:
    """No partials."""
    i64, f64 = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return Partials(i64, i64, i64, i64, f64, f64, f64, i64, i64, f64, f64)


def of_table(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The minute and hour partials of one raw file's rows (sorted by sensor, metric, ts).

    ``sensor`` and ``metric`` may be dictionary or plain string columns.
    """
    sensors, sensor = _codes(table["sensor"])
    metrics, metric = _codes(table["metric"])
    ts_us = table["ts"].combine_chunks().cast(pa.int64()).to_numpy()
    value = table["value"].combine_chunks().to_numpy()
    minutes = from_readings(ts_us, sensor, metric, value, MINUTE_US)
    hours = merge(minutes, HOUR_US)
    return minutes.table(sensors, metrics), hours.table(sensors, metrics)


def _codes(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """A dictionary and a code per row whose runs follow the rows (equal names, equal codes)."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    array = column.unify_dictionaries().combine_chunks()
    codes = array.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return array.dictionary, codes


def parquet_bytes(table: pa.Table) -> bytes:
    """A partial file: zstd, small, with statistics so that the views prune by sensor and bucket."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        use_dictionary=["sensor", "metric"],
        column_encoding={"bucket": "DELTA_BINARY_PACKED", "count": "DELTA_BINARY_PACKED"},
        row_group_size=256 * 1024,
        write_statistics=True,
    )
    return bytes(sink.getvalue())


def write_partials(
    root: Root, site: str, hour_us: int, name: str, rows: pa.Table, *, replace: bool = False
) -> int:
    """Write the minute and hour partials of one raw file's rows; missing ones only unless ``replace``.

    Returns how many partial files were written.
    """
    paths = (rollup_1m_path(site, hour_us, name), rollup_1h_path(site, hour_us, name))
    todo = [p for p in paths if replace or not root.exists(p)]
    if not todo:
        return 0
    minutes, hours = of_table(rows)
    for path, table in zip(paths, (minutes, hours), strict=True):
        if path in todo:
            root.write(path, parquet_bytes(table))
    return len(todo)
