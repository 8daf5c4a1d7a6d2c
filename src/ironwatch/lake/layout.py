"""Where things live in a tenant root (Hive-style, readable by DuckDB, Spark, Trino, Athena),
and how raw readings are written there as immutable Parquet files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ironwatch.lake.root import Root
from ironwatch.model import QUARANTINE_SCHEMA, READINGS_SCHEMA

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def readings_path(site: str, hour_us: int, name: str) -> str:
    """``readings/site=S/date=YYYY-MM-DD/hour=HH/NAME.parquet`` for the hour starting at ``hour_us``."""
    moment = datetime.fromtimestamp(hour_us / 1_000_000, UTC)
    return f"readings/site={site}/date={moment:%Y-%m-%d}/hour={moment:%H}/{name}.parquet"


def quarantine_path(day_us: int, name: str) -> str:
    """``quarantine/date=YYYY-MM-DD/NAME.parquet`` for the day starting at ``day_us``."""
    moment = datetime.fromtimestamp(day_us / 1_000_000, UTC)
    return f"quarantine/date={moment:%Y-%m-%d}/{name}.parquet"


def _parquet_bytes(table: pa.Table, compression_level: int) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=compression_level,
        use_dictionary=["sensor", "metric", "gateway"],
        column_encoding={
            "ts": "DELTA_BINARY_PACKED",
            "value": "BYTE_STREAM_SPLIT",
            "batch": "DELTA_BINARY_PACKED",
            "received_at": "DELTA_BINARY_PACKED",
        },
        row_group_size=1_000_000,
        write_statistics=True,
    )
    return bytes(sink.getvalue())


def _runs(keys: list[np.ndarray]) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of equal keys in arrays that are already sorted by them."""
    n = len(keys[0])
    if n == 0:
        return
    change = np.zeros(n - 1, dtype=bool)
    for k in keys:
        change |= k[1:] != k[:-1]
    edges = np.concatenate(([0], np.flatnonzero(change) + 1, [n]))
    yield from zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)


def to_readings_schema(table: pa.Table) -> pa.Table:
    """Cast a table of readings (plain strings) to the documented file schema."""
    return pa.table([table[f.name].cast(f.type) for f in READINGS_SCHEMA], schema=READINGS_SCHEMA)


def write_readings(root: Root, table: pa.Table, name: str, *, compression_level: int = 3) -> list[str]:
    """Write readings (with a ``site`` column) as one file per site and hour named ``name``.

    Rows are sorted by sensor, metric, ts within a file. A file that already exists is left as it is:
    file names are unique per log segment, so an existing file holds exactly these rows (this makes a
    replay of the log after a crash idempotent). Returns the paths written.
    """
    if table.num_rows == 0:
        return []
    ts_us = table["ts"].cast(pa.int64())
    hour = pc.multiply(pc.divide(ts_us, pa.scalar(HOUR_US, pa.int64())), pa.scalar(HOUR_US, pa.int64()))
    # floor division for times before 1970 is not needed: such readings are quarantined upstream.
    table = table.append_column("_hour", hour)
    order = pc.sort_indices(
        table,
        sort_keys=[
            ("site", "ascending"),
            ("_hour", "ascending"),
            ("sensor", "ascending"),
            ("metric", "ascending"),
            ("ts", "ascending"),
        ],
    )
    table = table.take(order)
    site_codes = pc.dictionary_encode(table["site"]).combine_chunks()
    hours = table["_hour"].to_numpy()
    written = []
    for start, stop in _runs([site_codes.indices.to_numpy(zero_copy_only=False), hours]):
        part = table.slice(start, stop - start)
        site = str(part["site"][0])
        path = readings_path(site, int(hours[start]), name)
        if root.exists(path):
            continue
        root.write(path, _parquet_bytes(to_readings_schema(part), compression_level))
        written.append(path)
    return written


def write_quarantine(root: Root, table: pa.Table, name: str) -> list[str]:
    """Write quarantined rows as one file per day of receipt; idempotent like :func:`write_readings`."""
    if table.num_rows == 0:
        return []
    table = table.cast(QUARANTINE_SCHEMA)
    day = pc.multiply(
        pc.divide(table["received_at"].cast(pa.int64()), pa.scalar(DAY_US, pa.int64())),
        pa.scalar(DAY_US, pa.int64()),
    )
    order = pc.sort_indices(day)
    table, days = table.take(order), day.take(order).to_numpy()
    written = []
    for start, stop in _runs([days]):
        path = quarantine_path(int(days[start]), name)
        if root.exists(path):
            continue
        sink = pa.BufferOutputStream()
        pq.write_table(table.slice(start, stop - start), sink, compression="zstd")
        root.write(path, bytes(sink.getvalue()))
        written.append(path)
    return written
