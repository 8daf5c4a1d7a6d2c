"""Reading statistics of the sensors of one site, one row per sensor in numpy arrays.

A batch is folded in with a handful of vectorised operations over its Arrow columns (one
dictionary encoding of the sensor column, then ``bincount`` and ``maximum.at``); the only Python
loops run over the distinct sensors of a batch and over rate buckets, never over readings.

Rates are counted by event time in ``N_BUCKETS`` buckets of ``bucket_us`` that cover the rate
window; a ring of ``RING`` columns, shared by the site's sensors, holds the recent buckets, each
column labelled with the bucket it holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

N_BUCKETS = 10
RING = N_BUCKETS + 2
NEVER = np.iinfo(np.int64).min
_LATEST = np.iinfo(np.int64).max


class SiteStats:
    """Per-sensor last reading, first reading, count and recent rate buckets of one site."""

    def __init__(self, bucket_us: int) -> None:
        self.bucket_us = bucket_us
        self.names: list[str] = []
        self._rows: dict[str, int] = {}
        self.gateway_names: list[str] = []
        self._gateway_codes: dict[str, int] = {}
        self._allocate(16)
        self.labels = np.full(RING, NEVER, np.int64)

    def _allocate(self, capacity: int) -> None:
        old = len(self.names)

        def grown(name: str, fill: Any, dtype: Any, columns: int = 0) -> np.ndarray:
            shape = (capacity, columns) if columns else (capacity,)
            new = np.full(shape, fill, dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            return new

        self.first_ts: np.ndarray = grown("first_ts", _LATEST, np.int64)
        self.last_ts: np.ndarray = grown("last_ts", NEVER, np.int64)
        self.last_received: np.ndarray = grown("last_received", NEVER, np.int64)
        self.readings: np.ndarray = grown("readings", 0, np.int64)
        self.gateway: np.ndarray = grown("gateway", -1, np.int32)
        self.dirty: np.ndarray = grown("dirty", False, np.bool_)
        self.counts: np.ndarray = grown("counts", 0, np.int64, RING)

    def __len__(self) -> int:
        return len(self.names)

    def row(self, sensor: str) -> int:
        """The row of ``sensor``, added if it is new."""
        found = self._rows.get(sensor)
        if found is not None:
            return found
        n = len(self.names)
        if n == len(self.last_ts):
            self._allocate(2 * n)
        self.names.append(sensor)
        self._rows[sensor] = n
        return n

    def gateway_code(self, gateway: str) -> int:
        """A small integer standing for ``gateway`` in the ``gateway`` column."""
        code = self._gateway_codes.get(gateway)
        if code is None:
            code = self._gateway_codes[gateway] = len(self.gateway_names)
            self.gateway_names.append(gateway)
        return code

    def rows_of(self, names: list[str]) -> np.ndarray:
        """The rows of ``names``, adding those that are new."""
        get = self._rows.get
        found = [get(s) for s in names]
        if None in found:
            found = [self.row(s) for s in names]
        return np.array(found, np.int64)

    def fold(self, batches: list[tuple[pa.Table, list[tuple[str, int]], int]]) -> None:
        """Add readings as ``(readings, [(gateway, rows), ...], received_us)``, in the order received.

        ``readings`` has ``ts`` (epoch µs) and ``sensor`` columns; the runs say which gateway sent
        how many of them, in order (batches written together share one table). Folding many batches
        at once costs one set of vectorised operations over all their readings.
        """
        tables = [t for t, _, _ in batches]
        sensor = pa.chunked_array([c for t in tables for c in t.column("sensor").chunks], pa.string())
        # Arrow encodes the chunks as they are (no copy into one array) with one dictionary for all;
        # should a version ever give each chunk its own, the first would lack later chunks' names.
        encoded = pc.dictionary_encode(sensor).chunks
        if len(encoded) > 1 and not encoded[0].dictionary.equals(encoded[-1].dictionary):
            encoded = [pc.dictionary_encode(sensor.combine_chunks())]
        idx = np.concatenate([c.indices.to_numpy() for c in encoded])
        rows = self.rows_of(encoded[-1].dictionary.to_pylist())
        ts = np.concatenate([t.column("ts").to_numpy() for t in tables])
        k = len(rows)
        newest = np.full(k, NEVER, np.int64)
        np.maximum.at(newest, idx, ts)
        self.last_ts[rows] = np.maximum(self.last_ts[rows], newest)
        is_new = self.first_ts[rows] == _LATEST
        if is_new.any():  # only a sensor's first batch needs its oldest reading (for its rate)
            oldest = np.full(k, _LATEST, np.int64)
            np.minimum.at(oldest, idx, ts)
            self.first_ts[rows] = np.minimum(self.first_ts[rows], oldest)
        # The batches of one fold arrived within a fraction of a second: the latest stands for all.
        now_us = max(r for _, _, r in batches)
        self.last_received[rows] = now_us
        self.readings[rows] += np.bincount(idx, minlength=k)
        runs = [run for _, table_runs, _ in batches for run in table_runs]
        codes = np.array([self.gateway_code(g) for g, _ in runs], np.int32)
        if (codes == codes[0]).all():
            self.gateway[rows] = codes[0]
        else:  # batches come in the order received: the last assignment is a sensor's latest gateway
            latest = np.empty(k, np.int32)
            latest[idx] = np.repeat(codes, [n for _, n in runs])
            self.gateway[rows] = latest
        self.dirty[rows] = True
        self._count(rows, idx, ts, now_us, int(ts.min()), int(ts.max()))

    def _count(
        self, rows: np.ndarray, idx: np.ndarray, ts: np.ndarray, now_us: int, lo: int, hi: int
    ) -> None:
        """Rate buckets: the window ending with the current bucket, and one bucket ahead for clocks
        that run a little fast. Late readings (an outage's backlog) fall before it and count only in
        the totals."""
        first = now_us // self.bucket_us - N_BUCKETS + 1
        width = N_BUCKETS + 1
        if lo // self.bucket_us < first or hi // self.bucket_us - first >= width:
            rel = ts // self.bucket_us - first
            keep = (rel >= 0) & (rel < width)
            if not keep.any():
                return
            idx, rel = idx[keep], rel[keep]
        else:  # the usual case: every reading is recent
            rel = ts // self.bucket_us - first
        k = len(rows)
        per = np.bincount(idx * width + rel, minlength=k * width).reshape(k, width)
        for r in np.flatnonzero(per.any(axis=0)):
            self.add_bucket(rows, int(first + r), per[:, r])

    def add_bucket(self, rows: np.ndarray, bucket: int, counts: np.ndarray) -> None:
        """Add ``counts`` readings of event-time bucket ``bucket`` to ``rows`` (distinct)."""
        slot = bucket % RING
        held = int(self.labels[slot])
        if held > bucket:
            return  # the ring has moved past this bucket
        if held < bucket:
            self.counts[:, slot] = 0
            self.labels[slot] = bucket
        self.counts[rows, slot] += counts

    def window(self, now_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Readings in the rate window ending at ``now_us``, and the µs they span, per row.

        The window starts ``N_BUCKETS - 1`` buckets before the current one, or at the bucket of a
        sensor's first reading if that is later.
        """
        n = len(self.names)
        current = now_us // self.bucket_us
        valid = (self.labels >= current - N_BUCKETS + 1) & (self.labels <= current)
        counts = self.counts[:n][:, valid].sum(axis=1)
        start = (current - N_BUCKETS + 1) * self.bucket_us
        first = (self.first_ts[:n] // self.bucket_us) * self.bucket_us
        return counts, now_us - np.maximum(start, first)

    def saved_window(self, row: int, now_us: int) -> dict[str, Any]:
        """The rate buckets of one row as ``{"bucket_us", "buckets": [[bucket, count], ...]}``."""
        current = now_us // self.bucket_us
        buckets = [
            [int(label), int(self.counts[row, slot])]
            for slot, label in enumerate(self.labels)
            if current - N_BUCKETS + 1 <= label <= current + 1 and self.counts[row, slot]
        ]
        return {"bucket_us": self.bucket_us, "buckets": sorted(buckets)}

    def restore(
        self,
        sensor: str,
        gateway: str | None,
        first_ts: int | None,
        last_ts: int | None,
        last_received: int | None,
        readings: int,
        window: dict[str, Any],
    ) -> None:
        """Put back one saved row (buckets only if they were counted with the same bucket size)."""
        row = self.row(sensor)
        self.first_ts[row] = _LATEST if first_ts is None else first_ts
        self.last_ts[row] = NEVER if last_ts is None else last_ts
        self.last_received[row] = NEVER if last_received is None else last_received
        self.readings[row] = readings
        self.gateway[row] = -1 if gateway is None else self.gateway_code(gateway)
        if window.get("bucket_us") == self.bucket_us:
            one = np.array([row], np.int64)
            for bucket, count in window.get("buckets", []):
                self.add_bucket(one, int(bucket), np.array([int(count)], np.int64))
