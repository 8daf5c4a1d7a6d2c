"""Where things live in a tenant root (Hive-style, readable by DuckDB, Spark, Trino, Athena),
and how raw readings are written there as immutable Parquet files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ironwatch.lake import journal, rollup
from ironwatch.lake.root import Root
from ironwatch.model import QUARANTINE_SCHEMA, READINGS_SCHEMA

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def hour_us(date: str, hour: int) -> int:
    """Epoch microseconds of the start of ``hour`` (0-23) on ``date`` (YYYY-MM-DD), in UTC."""
    return int(datetime.fromisoformat(f"{date}T{hour:02d}:00:00+00:00").timestamp()) * 1_000_000


def readings_path(site: str, hour_us: int, name: str) -> str:
    """``readings/site=S/date=YYYY-MM-DD/hour=HH/NAME.parquet`` for the hour starting at ``hour_us``."""
    moment = datetime.fromtimestamp(hour_us / 1_000_000, UTC)
    return f"readings/site={site}/date={moment:%Y-%m-%d}/hour={moment:%H}/{name}.parquet"


def quarantine_path(day_us: int, name: str) -> str:
    """``quarantine/date=YYYY-MM-DD/NAME.parquet`` for the day starting at ``day_us``."""
    moment = datetime.fromtimestamp(day_us / 1_000_000, UTC)
    return f"quarantine/date={moment:%Y-%m-%d}/{name}.parquet"


def readings_options(*, value_encoding: str, compression_level: int) -> dict[str, object]:
    """Parquet writer options of readings files: dictionary names, delta-encoded times and batch."""
    return {
        "compression": "zstd",
        "compression_level": compression_level,
        "use_dictionary": ["sensor", "metric", "gateway"],
        "column_encoding": {
            "ts": "DELTA_BINARY_PACKED",
            "value": value_encoding,
            "batch": "DELTA_BINARY_PACKED",
            "received_at": "DELTA_BINARY_PACKED",
        },
        "write_statistics": True,
    }


def _parquet_bytes(table: pa.Table, compression_level: int) -> bytes:
    sink = pa.BufferOutputStream()
    options = readings_options(value_encoding="BYTE_STREAM_SPLIT", compression_level=compression_level)
    pq.write_table(table, sink, row_group_size=1_000_000, **options)  # type: ignore[arg-type]
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


def write_readings(
    root: Root, table: pa.Table, name: str, *, compression_level: int = 3, rollups: bool = True
) -> list[str]:
    """Write readings (with a ``site`` column) as one file per site and hour named ``name``.

    Rows are sorted by sensor, metric, ts within a file. A file that already exists is left as it is:
    file names are unique per log segment, so an existing file holds exactly these rows (this makes a
    replay of the log after a crash idempotent), and so is one that a compaction has already merged
    into its hour's compacted file. With ``rollups``, each raw file's rollup partials are written
    after it, from the same sorted rows (the missing ones too, when the raw file was there already).
    Returns the raw paths written.
    """
    if table.num_rows == 0:
        return []
    ts_us = table["ts"].combine_chunks().cast(pa.int64()).to_numpy()
    # Readings before 1970 never get here (they are quarantined), so // is a floor.
    hours = ts_us // HOUR_US * HOUR_US
    names = {col: ranked_codes(table[col]) for col in ("site", "sensor", "metric", "gateway")}
    order = np.lexsort((ts_us, names["metric"][1], names["sensor"][1], hours, names["site"][1]))
    hours = hours[order]
    site_sorted = names["site"][1][order]
    take = pa.array(order)
    columns = {
        "ts": pc.take(table["ts"], take).cast(READINGS_SCHEMA.field("ts").type),
        "value": pc.take(table["value"], take),
        "batch": pc.take(table["batch"], take),
        "received_at": pc.take(table["received_at"], take).cast(READINGS_SCHEMA.field("received_at").type),
    }
    for col in ("sensor", "metric", "gateway"):
        dictionary, codes = names[col]
        columns[col] = pa.DictionaryArray.from_arrays(pa.array(codes[order], pa.int32()), dictionary)
    ordered = pa.table([columns[f.name] for f in READINGS_SCHEMA], schema=READINGS_SCHEMA)
    sites = names["site"][0]
    written = []
    for start, stop in _runs([site_sorted, hours]):
        site, hour_us = str(sites[int(site_sorted[start])]), int(hours[start])
        moment = datetime.fromtimestamp(hour_us / 1_000_000, UTC)
        if name in journal.compacted_names(root, site, f"{moment:%Y-%m-%d}", moment.hour):
            continue
        path = readings_path(site, hour_us, name)
        rows = ordered.slice(start, stop - start)
        if not root.exists(path):
            root.write(path, _parquet_bytes(rows, compression_level))
            written.append(path)
        if rollups:
            # After the raw file: compaction takes only raw files whose partials are all there.
            rollup.write_partials(root, site, hour_us, name, rows)
    return written


def ranked_codes(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A sorted dictionary of the column's distinct strings and each row's code into it.

    A dictionary-encoded column is ranked through its dictionary (small), not row by row.
    """
    if pa.types.is_dictionary(column.type):
        if isinstance(column, pa.ChunkedArray):
            column = column.unify_dictionaries().combine_chunks()
        dictionary, rank = ranked_codes(column.dictionary)
        return dictionary, rank[column.indices.to_numpy(zero_copy_only=False)]
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks()
    dictionary = encoded.dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return dictionary.take(pa.array(order)), codes


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
