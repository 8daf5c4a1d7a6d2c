"""Hours of the synthetic site generated straight into sorted form, without ingest or sorting.

The benchmarks of rollups and queries need hours of a 550-sensor x 17-metric site at 1 Hz as the
lake holds them: rows sorted by sensor, metric and ts, as a flushed raw file (an Arrow table) or as a
compacted file. Values come from the ingest benchmark's workload (bench/workload.py); gateways,
batch numbers and receive times follow how two gateways would have sent them (time-major batches of
1000 readings, received 20-80 ms after the batch's last reading).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from ironwatch.bench.workload import METRIC_NAMES, SITE, Workload
from ironwatch.lake.spill import Chunk
from ironwatch.model import NAME_TYPE, READINGS_SCHEMA, TS_TYPE

GATEWAYS = ("gw-bench-0", "gw-bench-1")
N_METRICS = len(METRIC_NAMES)


@dataclasses.dataclass(frozen=True)
class Site:
    """``sensors`` sensors of 17 metrics at 1 Hz from ``start_us`` (on a whole hour)."""

    sensors: int
    start_us: int

    @property
    def sensor_names(self) -> pa.Array:
        return pa.array([f"s-{i:04d}" for i in range(self.sensors)], pa.string())

    @property
    def metric_names(self) -> pa.Array:
        return pa.array(sorted(METRIC_NAMES), pa.string())

    @property
    def gateway_names(self) -> pa.Array:
        return pa.array(GATEWAYS, pa.string())

    def chunk(self, first_step: int, steps: int, lo: int, hi: int) -> Chunk:
        """Readings of sensors ``[lo, hi)`` over ``steps`` seconds from ``first_step``, sorted.

        ``sensor`` and ``metric`` are ranks into :attr:`sensor_names` and :attr:`metric_names`,
        ``gateway`` an index into :attr:`gateway_names`.
        """
        n_sensors = hi - lo
        metric_index = np.array([METRIC_NAMES.index(m) for m in sorted(METRIC_NAMES)], dtype=np.int64)
        sensor = np.repeat(np.arange(lo, hi, dtype=np.int32), N_METRICS * steps)
        metric = np.tile(np.repeat(np.arange(N_METRICS, dtype=np.int32), steps), n_sensors)
        step = np.tile(np.arange(first_step, first_step + steps, dtype=np.int64), n_sensors * N_METRICS)
        series = sensor.astype(np.int64) * N_METRICS + metric_index[metric]
        half = (self.sensors + 1) // 2
        gateway = (sensor >= half).astype(np.int32)
        # Each gateway sends its sensors time-major in batches of 1000 readings.
        width = np.where(gateway == 0, half, self.sensors - half) * N_METRICS
        column = (sensor - gateway * half).astype(np.int64) * N_METRICS + metric_index[metric]
        position = step * width + column
        batch = position // 1000 + 1
        ts = self.start_us + step * 1_000_000
        latency_us = 20_000 + (batch * 2_654_435_761 + gateway) % 60_000
        received = self.start_us + (position // 1000 * 1000 + 999) // width * 1_000_000 + latency_us
        values = Workload(readings=0, clients=2, start_ms=self.start_us // 1000).values(step, series)
        return Chunk(ts, sensor, metric, values, gateway, batch, received)

    def table(self, first_step: int, steps: int) -> pa.Table:
        """All sensors over ``steps`` seconds as one raw-file table (``READINGS_SCHEMA``), sorted."""
        c = self.chunk(first_step, steps, 0, self.sensors)

        def names(codes: np.ndarray, dictionary: pa.Array) -> pa.Array:
            return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary).cast(NAME_TYPE)

        return pa.Table.from_arrays(
            [
                pa.array(c.ts, pa.int64()).cast(TS_TYPE),
                names(c.sensor, self.sensor_names),
                names(c.metric, self.metric_names),
                pa.array(c.value),
                names(c.gateway, self.gateway_names),
                pa.array(c.batch),
                pa.array(c.received_at, pa.int64()).cast(TS_TYPE),
            ],
            schema=READINGS_SCHEMA,
        )


__all__ = ["SITE", "Site"]
