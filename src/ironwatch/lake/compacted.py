"""The compacted raw file of one hour: every reading of a site-hour in one file, with its partials.

Same columns and sort order as every raw file (READINGS_SCHEMA), and readable by any Parquet reader;
what differs is the physical layout, tuned for storage and for reading one sensor's series:

- row groups of whole series (a sensor-metric's hour is in one row group unless it is longer than
  a row group) of at most ``row_group_rows`` rows, each with its statistics, and small pages
  (:data:`PAGE_BYTES`) with a page index: a query for one sensor and metric skips the other row
  groups by their statistics and, inside its row group, the other pages by the page index (DuckDB
  reads it). Many small row groups would do the same with far larger footers, which every query
  has to parse: on a week-long lake, 24 files of 257 row groups took 75 ms per sensor-metric-day,
  24 files of 33 row groups with a page index 27 ms;
- each row group's dictionaries hold only the names it uses, so those statistics are tight;
- ``ts``, ``batch`` and ``received_at`` delta-encoded; ``value`` PLAIN under zstd, which on sensor
  data (a few significant digits, slowly changing) beats BYTE_STREAM_SPLIT and dictionaries:
  about 2.6 against 6.2 bytes per value on the peers' workload (see docs/lake.md).
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ironwatch.lake import rollup
from ironwatch.lake.layout import readings_options
from ironwatch.lake.spill import Chunk
from ironwatch.model import READINGS_SCHEMA, TS_TYPE

#: Compacted files are named ``c-{id}``; flushed raw files ``{writer}-{seq}``.
PREFIX = "c-"
#: Target size of a data page; the page index lets readers skip to the pages of one series.
PAGE_BYTES = 128 * 1024


def is_compacted(name: str) -> bool:
    """Whether a raw file name is the output of a compaction."""
    return name.startswith(PREFIX)


class Writer:
    """Writes chunks sorted by sensor, metric, ts (names as ranks or ids into the given arrays).

    The minute and hour partials of the file are computed from the same chunks on the way, so the
    compacted file's rollups need no second pass over it.
    """

    def __init__(
        self,
        sink: BinaryIO,
        *,
        sensors: pa.Array,
        metrics: pa.Array,
        gateways: pa.Array,
        row_group_rows: int = 1 << 20,
        compression_level: int = 6,
    ) -> None:
        self.sensors, self.metrics, self.gateways = sensors, metrics, gateways
        self.row_group_rows = max(1, int(row_group_rows))
        self.rows = 0
        self._pending: Chunk | None = None
        self._minutes: list[rollup.Partials] = []
        options = readings_options(value_encoding="PLAIN", compression_level=compression_level)
        self._writer = pq.ParquetWriter(
            sink,
            READINGS_SCHEMA,
            write_page_index=True,
            data_page_size=PAGE_BYTES,
            **options,  # type: ignore[arg-type]
        )

    def add(self, chunk: Chunk) -> None:
        """Append rows that follow every row added so far in sort order."""
        if len(chunk) == 0:
            return
        self._minutes.append(
            rollup.from_readings(chunk.ts, chunk.sensor, chunk.metric, chunk.value, rollup.MINUTE_US)
        )
        rows = chunk if self._pending is None else Chunk.concat([self._pending, chunk])
        while len(rows) > self.row_group_rows:
            cut = _cut(rows, self.row_group_rows)
            self._write(rows.take(slice(0, cut)))
            rows = rows.take(slice(cut, None))
        self._pending = rows

    def close(self) -> tuple[pa.Table, pa.Table]:
        """Finish the file; returns its minute and hour partials (tables of rollup.PARTIAL_SCHEMA)."""
        if self._pending is not None and len(self._pending):
            self._write(self._pending)
        self._pending = None
        self._writer.close()
        minutes = rollup.concat(self._minutes) if self._minutes else rollup.empty()
        hours = rollup.merge(minutes, rollup.HOUR_US)
        return minutes.table(self.sensors, self.metrics), hours.table(self.sensors, self.metrics)

    def _write(self, rows: Chunk) -> None:
        columns = {
            "ts": pa.array(rows.ts, pa.int64()).cast(TS_TYPE),
            "sensor": _names(rows.sensor, self.sensors),
            "metric": _names(rows.metric, self.metrics),
            "value": pa.array(rows.value, pa.float64()),
            "gateway": _names(rows.gateway, self.gateways),
            "batch": pa.array(rows.batch, pa.int64()),
            "received_at": pa.array(rows.received_at, pa.int64()).cast(TS_TYPE),
        }
        table = pa.Table.from_arrays([columns[f.name] for f in READINGS_SCHEMA], schema=READINGS_SCHEMA)
        self._writer.write_table(table, row_group_size=len(rows))
        self.rows += len(rows)


def _cut(rows: Chunk, limit: int) -> int:
    """Rows in the next row group: the most whole series that fit in ``limit``, else ``limit``."""
    head_sensor, head_metric = rows.sensor[: limit + 1], rows.metric[: limit + 1]
    starts = np.flatnonzero((head_sensor[1:] != head_sensor[:-1]) | (head_metric[1:] != head_metric[:-1])) + 1
    starts = starts[starts <= limit]
    return int(starts[-1]) if len(starts) else limit


def _names(codes: np.ndarray, names: pa.Array) -> pa.DictionaryArray:
    """A dictionary column whose dictionary holds only the range of names the rows use."""
    lo, hi = int(codes.min()), int(codes.max())
    return pa.DictionaryArray.from_arrays(pa.array(codes - lo, pa.int32()), names.slice(lo, hi - lo + 1))
