"""Sorting an hour's raw files into one sequence by sensor, metric and ts, in bounded memory.

An hour of a busy site is tens of millions of readings in hundreds of files, each sorted by sensor,
metric and ts on its own: more than a server should hold in memory at once. Each file is decoded
once into an uncompressed Arrow file in a scratch folder, with names replaced by ids; then the hour
is put together a few sensors at a time from memory-mapped slices of those files (each file's rows
of a sensor range are contiguous, as the file is sorted by sensor), sorted and handed on.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

_COLUMNS = ("ts", "sensor", "metric", "value", "gateway", "batch", "received_at")
_SPILL_SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("sensor", pa.int32()),
        ("metric", pa.int32()),
        ("value", pa.float64()),
        ("gateway", pa.int32()),
        ("batch", pa.int64()),
        ("received_at", pa.int64()),
    ]
)


class Names:
    """Ids for the distinct strings of one column across files, and their sorted order."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def codes(self, column: pa.ChunkedArray) -> np.ndarray:
        """Each row's id (new strings get the next ids)."""
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        array = column.unify_dictionaries().combine_chunks()
        lookup = np.array([self.ids.setdefault(s, len(self.ids)) for s in array.dictionary.to_pylist()])
        codes: np.ndarray = lookup.astype(np.int32)[array.indices.to_numpy(zero_copy_only=False)]
        return codes

    def sorted(self) -> tuple[pa.Array, np.ndarray]:
        """The strings in sorted order, and the rank of each id in that order."""
        names = sorted(self.ids)
        rank = np.empty(len(names), dtype=np.int32)
        rank[[self.ids[n] for n in names]] = np.arange(len(names), dtype=np.int32)
        return pa.array(names, pa.string()), rank


@dataclasses.dataclass
class Chunk:
    """Rows of a whole range of sensors, sorted by sensor, metric, ts; names as ranks (see Names)."""

    ts: np.ndarray
    sensor: np.ndarray
    metric: np.ndarray
    value: np.ndarray
    gateway: np.ndarray
    batch: np.ndarray
    received_at: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray | slice) -> Chunk:
        return Chunk(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(parts: list[Chunk]) -> Chunk:
        if len(parts) == 1:
            return parts[0]
        return Chunk(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Chunk)}
        )


class Spill:
    """Raw tables added one by one, read back as sorted chunks of whole sensors.

    Up to ``memory_rows`` rows stay in memory; past that, every file goes to the scratch folder.
    """

    #: Spilled files kept open (memory-mapped) across chunks; more are opened chunk by chunk.
    MAX_OPEN = 256

    def __init__(self, folder: Path, *, memory_rows: int = 1_000_000) -> None:
        self.folder = folder
        self.memory_rows = memory_rows
        self.sensors, self.metrics, self.gateways = Names(), Names(), Names()
        # Per file: its rows (in memory, or the path of its spilled copy), sensor id per run, run edges.
        self._files: list[tuple[pa.RecordBatch | Path, np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        """Keep one raw file's rows (sorted by sensor, metric, ts, as every raw file is)."""
        if table.num_rows == 0:
            return
        sensor = self.sensors.codes(table["sensor"])
        batch = pa.record_batch(
            [
                table["ts"].combine_chunks().cast(pa.int64()),
                pa.array(sensor),
                pa.array(self.metrics.codes(table["metric"])),
                table["value"].combine_chunks(),
                pa.array(self.gateways.codes(table["gateway"])),
                table["batch"].combine_chunks(),
                table["received_at"].combine_chunks().cast(pa.int64()),
            ],
            schema=_SPILL_SCHEMA,
        )
        edges = np.concatenate(([0], np.flatnonzero(sensor[1:] != sensor[:-1]) + 1, [len(sensor)]))
        self._files.append((batch, sensor[edges[:-1]], edges))
        self.rows += table.num_rows
        if self.rows > self.memory_rows:
            self._files = [(self._spilled(i, rows), ids, e) for i, (rows, ids, e) in enumerate(self._files)]

    def _spilled(self, index: int, rows: pa.RecordBatch | Path) -> Path:
        if isinstance(rows, Path):
            return rows
        path = self.folder / f"{index:06d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _SPILL_SCHEMA) as writer:
            writer.write_batch(rows)
        return path

    def chunks(self, max_rows: int) -> Iterator[Chunk]:
        """Every row once, in order, as chunks of whole sensors of about ``max_rows`` rows."""
        sensor_names, sensor_rank = self.sensors.sorted()
        _, metric_rank = self.metrics.sorted()
        per_sensor = np.zeros(len(sensor_names), dtype=np.int64)
        for _, ids, edges in self._files:
            np.add.at(per_sensor, sensor_rank[ids], np.diff(edges))
        # Sensor ranks at which a chunk starts: whole sensors, about max_rows rows each.
        ends = np.cumsum(per_sensor)
        starts = np.unique(np.searchsorted(ends, np.arange(0, max(1, self.rows), max_rows), side="right"))
        bounds = [*starts.tolist(), len(sensor_names)]
        files = [(rows, sensor_rank[ids], edges) for rows, ids, edges in self._files]
        keep_open = len(files) <= self.MAX_OPEN
        opened: dict[int, tuple[pa.MemoryMappedFile, pa.RecordBatch]] = {}
        try:
            for lo, hi in itertools.pairwise(bounds):
                parts = []
                for i, (rows, ranks, edges) in enumerate(files):
                    # A raw file is sorted by sensor name, so its rows of ranks [lo, hi) are one slice.
                    first, last = np.searchsorted(ranks, lo), np.searchsorted(ranks, hi)
                    if first < last:
                        batch = rows if isinstance(rows, pa.RecordBatch) else self._open(opened, i, rows)
                        parts.append(_chunk(batch.slice(edges[first], edges[last] - edges[first])))
                # Sorting copies every column, so mapped files may be closed once it is done.
                chunk = _sorted(Chunk.concat(parts), sensor_rank, metric_rank) if parts else None
                if not keep_open:
                    _close(opened)
                if chunk is not None:
                    yield chunk
        finally:
            _close(opened)

    @staticmethod
    def _open(
        opened: dict[int, tuple[pa.MemoryMappedFile, pa.RecordBatch]], index: int, path: Path
    ) -> pa.RecordBatch:
        if index not in opened:
            mapped = pa.memory_map(str(path))
            opened[index] = (mapped, pa.ipc.open_file(mapped).get_batch(0))
        return opened[index][1]


def _close(opened: dict[int, tuple[pa.MemoryMappedFile, pa.RecordBatch]]) -> None:
    for mapped, _ in opened.values():
        mapped.close()
    opened.clear()


def _chunk(batch: pa.RecordBatch) -> Chunk:
    return Chunk(**{name: batch.column(name).to_numpy() for name in _COLUMNS})


def _sorted(chunk: Chunk, sensor_rank: np.ndarray, metric_rank: np.ndarray) -> Chunk:
    """Ids turned into ranks and rows sorted by sensor, metric, ts (stable: ties keep file order)."""
    chunk.sensor = sensor_rank[chunk.sensor]
    chunk.metric = metric_rank[chunk.metric]
    lowest = int(chunk.ts.min()) if len(chunk) else 0
    span = int(chunk.ts.max()) - lowest if len(chunk) else 0
    n_metrics = len(metric_rank)
    series = chunk.sensor.astype(np.int64) * n_metrics + chunk.metric
    if span < (1 << 32) and int(series.max()) < (1 << 31):
        # One int64 key (series in the high bits, time in the low): the rows arrive as sorted runs,
        # which the stable sort (timsort) merges quickly.
        order = np.argsort((series << 32) | (chunk.ts - lowest), kind="stable")
    else:
        order = np.lexsort((chunk.ts, series))
    return chunk.take(order)
