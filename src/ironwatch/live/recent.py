"""The recent buffer: readings acknowledged moments ago, held until the lake has them.

A batch is acknowledged once it is in the write-ahead log; the flusher writes it to Parquet up to
``lake.flush_interval_s`` later. Series must not wait for that, so the bus keeps every acknowledged
batch here, in publish order, and the series service merges what it finds here with the lake's
answer (without duplicates).

A chunk leaves the buffer once the log segment that held it is in the lake. The log writer calls
:meth:`Recent.segment_closed` when it closes a segment, after every batch of that segment has been
published (publishing runs in the acknowledgement's callback, before the segment is closed); the
flusher calls :meth:`Recent.segment_flushed` once the segment's files are written. A batch published
a little after its segment closed is only kept longer, never dropped early. ``max_readings`` bounds
memory when the flusher falls far behind; past it the oldest chunks go (and are counted).
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import pyarrow as pa
import pyarrow.compute as pc

from ironwatch import lake

POINTS_SCHEMA = lake.series.POINTS_SCHEMA


@dataclasses.dataclass(frozen=True)
class _Chunk:
    seq: int
    tenant: str
    site: str
    readings: pa.Table


class Recent:
    """Acknowledged readings of every tenant, until the log segment holding them is in the lake."""

    def __init__(self, max_readings: int = 1_000_000) -> None:
        self.max_readings = max_readings
        self._lock = threading.Lock()
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._seq = 0
        self._readings = 0
        self._marks: dict[int, int] = {}
        #: Readings dropped because the buffer was full before the lake had them.
        self.evicted_early = 0

    @property
    def readings_held(self) -> int:
        """How many readings the buffer holds now."""
        return self._readings

    def add(self, tenant: str, site: str, readings: pa.Table) -> None:
        """Keep one acknowledged batch's good readings (``WAL_SCHEMA``); O(1), no copy."""
        n = readings.num_rows
        if n == 0:
            return
        with self._lock:
            self._seq += 1
            self._chunks.append(_Chunk(self._seq, tenant, site, readings))
            self._readings += n
            while self._readings > self.max_readings and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._readings -= old.readings.num_rows
                self.evicted_early += old.readings.num_rows

    def segment_closed(self, segment_seq: int) -> None:
        """Everything published so far is in log segments up to ``segment_seq``."""
        with self._lock:
            self._marks[segment_seq] = self._seq

    def segment_flushed(self, segment_seq: int) -> None:
        """The lake holds log segment ``segment_seq``: forget what was published before it closed."""
        with self._lock:
            mark = self._marks.pop(segment_seq, None)
            if mark is None:  # a segment recovered at start: nothing of it was published
                return
            for older in [s for s in self._marks if s < segment_seq]:
                del self._marks[older]
            while self._chunks and self._chunks[0].seq <= mark:
                self._readings -= self._chunks.popleft().readings.num_rows

    def points(
        self, tenant: str, site: str, sensor: str, metric: str, start_us: int, end_us: int
    ) -> pa.Table:
        """Readings of one sensor and metric with ``start_us <= ts < end_us`` (``POINTS_SCHEMA``)."""
        with self._lock:
            tables = [c.readings for c in self._chunks if c.tenant == tenant and c.site == site]
        if not tables:
            return POINTS_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        ts = table["ts"]
        mask = pc.and_(
            pc.and_(pc.equal(table["sensor"], sensor), pc.equal(table["metric"], metric)),
            pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, end_us)),
        )
        return table.filter(mask).select(["ts", "value"]).cast(POINTS_SCHEMA)
