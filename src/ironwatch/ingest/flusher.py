"""The flusher: turns closed log segments into Parquet files in each tenant's root.

A segment is deleted only after its files are written and the checkpoint that follows them is on
disk. File names derive from the segment (``{writer}-{seq}``), so flushing a segment again after a
crash finds its files already there and writes only what is missing: every reading lands once.

Writing the files (:func:`write_segment`) is a pure step from a segment to files, so it can run in
the flusher's own thread or in a separate process (:mod:`ironwatch.ingest.lakewriter`); everything
that touches the server's state (sensor discovery, the checkpoint, deleting the segment) stays in
the flusher.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa

from ironwatch import lake
from ironwatch.errors import IronwatchError
from ironwatch.ingest import record as records
from ironwatch.ingest.ledger import Ledger
from ironwatch.ingest.wal import Segment, read_records, write_durably
from ironwatch.lake.layout import ranked_codes
from ironwatch.model import TS_TYPE

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.json"


def load_checkpoint(state_dir: Path) -> dict[str, Any]:
    """The last checkpoint: ``{"flushed_seq": n, "ledger": {...}}`` (empty on a new data dir)."""
    path = state_dir / CHECKPOINT
    if not path.exists():
        return {"flushed_seq": -1, "ledger": {}}
    return dict(orjson.loads(path.read_bytes()))


def _write_checkpoint(state_dir: Path, content: dict[str, Any]) -> None:
    write_durably(state_dir / CHECKPOINT, orjson.dumps(content))


def readings_table(recs: list[records.Record]) -> pa.Table:
    """Good readings of several records as one table with site, gateway, batch and received_at.

    What is the same for every reading of a batch is spread over its rows without a per-row copy of
    any string: ``site`` and ``gateway`` are dictionary arrays whose dictionary is sorted and holds
    each name once (so a code's order is its name's order), ``batch`` and ``received_at`` a numpy
    gather from one value per batch.
    """
    recs = [r for r in recs if r.good.num_rows]
    if not recs:
        return pa.table({"ts": pa.array([], TS_TYPE)})
    parts = [(r, p) for r in recs for p in r.parts]
    owner = np.repeat(np.arange(len(parts), dtype=np.int32), [p.rows for _, p in parts])
    table = pa.concat_tables([r.good for r in recs])

    def names(values: list[str]) -> pa.DictionaryArray:
        unique, code = np.unique(np.array(values, dtype=object), return_inverse=True)
        return pa.DictionaryArray.from_arrays(
            pa.array(code.astype(np.int32)[owner]), pa.array(unique, pa.string())
        )

    def numbers(values: list[int]) -> pa.Array:
        return pa.array(np.array(values, dtype=np.int64)[owner])

    return pa.table(
        {
            "site": names([p.site for _, p in parts]),
            "ts": table["ts"].cast(TS_TYPE),
            "sensor": table["sensor"],
            "metric": table["metric"],
            "value": table["value"],
            "gateway": names([p.gateway for _, p in parts]),
            "batch": numbers([p.batch for _, p in parts]),
            "received_at": numbers([r.received_at_us for r, _ in parts]).cast(TS_TYPE),
        }
    )


@dataclasses.dataclass(frozen=True)
class Seen:
    """Sensors a segment holds readings of, for one tenant and site (to register as discovered)."""

    tenant: str
    site: str
    gateway: str | None
    sensors: list[str]


@dataclasses.dataclass(frozen=True)
class Written:
    """What writing one segment to the lake produced."""

    files: int
    seen: list[Seen]


def write_segment(
    segment: Segment, name: str, root_of: Callable[[str], lake.Root], compression_level: int
) -> Written:
    """Write a segment's readings and quarantined rows to each tenant's root as files named ``name``."""
    by_tenant: dict[str, list[records.Record]] = {}
    for payload in read_records(segment.path, segment.size_bytes):
        rec = records.decode(payload)
        by_tenant.setdefault(rec.tenant, []).append(rec)
    files = 0
    seen: list[Seen] = []
    for tenant, recs in by_tenant.items():
        root = root_of(tenant)
        table = readings_table(recs)
        if table.num_rows:
            files += len(lake.write_readings(root, table, name, compression_level=compression_level))
            seen += _sensors_seen(tenant, table)
        bad = [r.quarantine for r in recs if r.quarantine.num_rows]
        if bad:
            files += len(lake.write_quarantine(root, pa.concat_tables(bad), name))
    return Written(files, seen)


def _sensors_seen(tenant: str, table: pa.Table) -> list[Seen]:
    """The sensors of :func:`readings_table`'s rows, by site and the gateway that sent each first by name.

    A sensor sent by several gateways of a site is credited to the first of them by name, so that
    writing the same segment again gives the same answer.
    """
    sites, site_codes = ranked_codes(table["site"])
    gateways, gateway_codes = ranked_codes(table["gateway"])
    pairs = (
        pa.table({"site": site_codes, "sensor": table["sensor"], "gateway": gateway_codes})
        .group_by(["site", "sensor"])
        .aggregate([("gateway", "min")])
    )
    site_names, gateway_names = sites.to_pylist(), gateways.to_pylist()  # codes rank the names
    seen: dict[tuple[str, str], list[str]] = {}
    for site_code, sensor, gateway_code in zip(
        pairs["site"].to_pylist(),
        pairs["sensor"].to_pylist(),
        pairs["gateway_min"].to_pylist(),
        strict=True,
    ):
        seen.setdefault((site_names[site_code], gateway_names[gateway_code]), []).append(sensor)
    return [Seen(tenant, s, g, sorted(sensors)) for (s, g), sensors in sorted(seen.items())]


class SegmentWriter(Protocol):
    """Where a segment's files are written: in the flusher's thread, or in a lake writer process."""

    def write(self, segment: Segment, name: str) -> Written: ...

    def close(self) -> None: ...


class InProcessWriter:
    """Writes segments in the calling thread."""

    def __init__(self, root_of: Callable[[str], lake.Root], compression_level: int) -> None:
        self._root_of = root_of
        self._compression_level = compression_level

    def write(self, segment: Segment, name: str) -> Written:
        return write_segment(segment, name, self._root_of, self._compression_level)

    def close(self) -> None:
        pass


class Flusher:
    """A background thread that flushes segments in order, retrying storage errors with backoff."""

    def __init__(
        self,
        *,
        state_dir: Path,
        writer_id: str,
        writer: SegmentWriter,
        ledger: Ledger,
        discover: Callable[[str, str, list[str], str | None], None],
        on_written: Callable[[int, int], None] = lambda files, size: None,
        on_flushed: Callable[[int], None] = lambda seq: None,
    ) -> None:
        self.state_dir = state_dir
        self.writer_id = writer_id
        self._writer = writer
        self._ledger = ledger
        self._discover = discover
        self._on_written = on_written
        self._on_flushed = on_flushed
        self._queue: queue.Queue[Segment | None] = queue.Queue()
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_queue = 0
        self._thread = threading.Thread(target=self._run, name="lake-flusher", daemon=True)
        self._stopping = threading.Event()
        self.last_error: str | None = None

    @property
    def pending_segments(self) -> int:
        return self._in_queue

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def start(self) -> None:
        self._thread.start()

    def submit(self, segment: Segment) -> None:
        """Queue a closed segment for flushing (called by the log writer)."""
        with self._lock:
            self._in_queue += 1
            self._pending_bytes += segment.size_bytes
        self._queue.put(segment)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every queued segment is flushed; ``False`` on time-out."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stop(self) -> None:
        """Flush what is queued, then stop.

        A segment that cannot be flushed now (a tenant's storage unreachable) is not retried any
        more: it stays in the log, and the next start flushes it.
        """
        self._stopping.set()
        self._queue.put(None)
        self._thread.join()
        self._writer.close()

    def _run(self) -> None:
        while True:
            segment = self._queue.get()
            if segment is None:
                return
            delay_s = 0.5
            while True:
                try:
                    self.flush(segment)
                    self.last_error = None
                    break
                except (IronwatchError, OSError, pa.ArrowException) as exc:
                    self.last_error = f"flushing segment {segment.seq}: {exc}"
                    if self._stopping.is_set():
                        log.error(
                            "flusher: %s; stopping with %d segments left in the log for the next start",
                            self.last_error,
                            self._in_queue,
                        )
                        return
                    log.error("flusher: %s; retrying in %.1f s", self.last_error, delay_s)
                    self._stopping.wait(delay_s)
                    delay_s = min(delay_s * 2, 30.0)
            with self._idle:
                self._in_queue -= 1
                self._pending_bytes -= segment.size_bytes
                self._idle.notify_all()

    def flush(self, segment: Segment) -> None:
        """Write one segment to the lake, register its sensors, checkpoint, then delete it."""
        written = self._writer.write(segment, f"{self.writer_id}-{segment.seq:012d}")
        for seen in written.seen:
            self._discover(seen.tenant, seen.site, seen.sensors, seen.gateway)
        _write_checkpoint(self.state_dir, {"flushed_seq": segment.seq, "ledger": self._ledger.snapshot()})
        segment.path.unlink(missing_ok=True)
        self._on_written(written.files, segment.size_bytes)
        self._on_flushed(segment.seq)
