"""The simulator as a gateway source: live reads, history for backfill, and the ground-truth log.

Simulated time runs ``speed`` times faster than the clock from the moment the source opens, from
``start`` (or from that moment), but never ahead of the clock: the server quarantines readings
from the future. Every reading is a pure function of the seed, the options and its own time (see
:mod:`.noise`), so ``read`` in any steps, ``history`` in any chunks, and a restarted gateway all
produce the same readings for the same span, bit for bit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ironwatch.errors import ConfigError
from ironwatch.gateway.simulator.exposure import expose, frozen_time, sensor_mask
from ironwatch.gateway.simulator.faults import Fault, Plan, week_of, write_ground_truth
from ironwatch.gateway.simulator.options import Options, parse
from ironwatch.gateway.simulator.plant import METRICS, Plant
from ironwatch.gateway.simulator.sampling import Sampling
from ironwatch.gateway.simulator.signals import Physics
from ironwatch.gateway.source import SAMPLE_SCHEMA, SourceUnavailable, empty_sample

#: Most simulated time one ``read`` covers; a fast simulation that fell behind catches up over reads.
MAX_READ_MS = 15 * 60 * 1000
_WEEKS_AHEAD_LOGGED = 4


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Simulator:
    """A simulated sort center (see :mod:`ironwatch.gateway.simulator`) that the gateway reads."""

    name = "simulator"

    def __init__(
        self,
        options: Options | None = None,
        *,
        clock: Callable[[], int] | None = None,
        where: str = "simulator",
    ) -> None:
        self.options = options or Options()
        self.where = where  # the config prefix, for errors that name an option
        self.interval_s = self.options.interval_s
        self.plant = Plant(self.options.sensors, self.options.seed)
        self.period_ms = self.options.period_ms
        self._physics = Physics(self.plant, self.options.seed)
        self._sampling = Sampling(self.plant, self.options.seed, self.period_ms, self.options.delivery)
        # History may be sampled more sparsely than live readings (backfill_rate_per_min), so a
        # few days of it stay affordable; it is then its own grid, as deterministic as the live one.
        self.history_period_ms = self.options.history_period_ms
        self._history_sampling = (
            self._sampling
            if self.history_period_ms == self.period_ms
            else Sampling(self.plant, self.options.seed, self.history_period_ms, self.options.delivery)
        )
        self._plan = Plan(self.plant, self.options.seed, self.options.faults)
        self._clock = clock or _wall_ms
        self._sensor_names = pa.array(self.plant.sensor_ids, pa.string())
        self._metric_names = pa.array(METRICS, pa.string())
        self._metric_pattern = np.arange(len(METRICS), dtype=np.int32)
        self._real_start_ms: int | None = None
        self._sim_start_ms = 0
        self._cursor_ms: int | None = None
        self._logged_week: int | None = None

    # -- the Source contract -------------------------------------------------------------------

    def open(self) -> None:
        """Fix the start of simulated time and write the ground-truth log; nothing to connect to."""
        self._real_start_ms = self._clock()
        start = self.options.start_ms
        self._sim_start_ms = start if start is not None else self._real_start_ms
        if self._cursor_ms is None:
            self._cursor_ms = self._sim_start_ms
        self._write_log(self._sim_start_ms)

    def read(self, now_ms: int) -> pa.Table:
        """Readings of simulated time since the last read, up to ``now_ms`` at the latest."""
        if self._cursor_ms is None:
            raise SourceUnavailable(self.name, "read before open")
        end = min(self.sim_now(now_ms) + 1, self._cursor_ms + MAX_READ_MS)
        if end <= self._cursor_ms:
            return empty_sample()
        table = self.readings(self._cursor_ms, end)
        self._cursor_ms = end
        if self._logged_week is not None and week_of(end) != self._logged_week:
            self._write_log(end)
        return table

    def declared_rates(self) -> dict[str, float]:
        """Every sensor with the readings per minute it declares for each metric."""
        return dict.fromkeys(self.plant.sensor_ids, self.options.rate_per_min)

    def check(self) -> None:
        """Validate what can be validated: the ground-truth log's folder must be writable."""
        path = self.options.ground_truth
        if path is None:
            return
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(
                f"{self.where}.ground_truth", f"cannot write the ground-truth log in {path.parent}"
            )

    def close(self) -> None:
        """Nothing to release; safe to call twice."""

    # -- history and time ----------------------------------------------------------------------

    def history(self, start_ms: int, end_ms: int, chunk_s: float) -> Iterator[pa.Table]:
        """Readings of [start_ms, end_ms) in tables of ``chunk_s`` of simulated time each.

        The readings are those ``read`` would have returned for the span (sampled every
        ``history_period_ms`` instead when ``backfill_rate_per_min`` differs); afterwards ``read``
        goes on from ``end_ms``, so history and live readings neither overlap nor leave a gap.
        """
        step = max(1, round(chunk_s * 1000))
        for a in range(start_ms, end_ms, step):
            b = min(a + step, end_ms)
            table = self.readings(a, b, is_history=True)
            self._cursor_ms = b
            yield table
        self._cursor_ms = max(end_ms, start_ms)

    def backfill_span(self) -> tuple[int, int] | None:
        """The span ``backfill_days`` asks for, ending where live reading starts (after ``open``)."""
        if self.options.backfill_days <= 0 or self._real_start_ms is None:
            return None
        end = self._cursor_ms if self._cursor_ms is not None else self._sim_start_ms
        return end - round(self.options.backfill_days * 86_400_000), end

    def sim_now(self, now_ms: int) -> int:
        """Simulated time at the real time ``now_ms``: ``speed`` times as fast, never past ``now_ms``."""
        if self._real_start_ms is None:
            raise SourceUnavailable(self.name, "not open")
        elapsed = (now_ms - self._real_start_ms) * self.options.speed
        return min(self._sim_start_ms + math.floor(elapsed), now_ms)

    def faults(self, start_ms: int, end_ms: int) -> list[Fault]:
        """The injected faults active at some moment of [start_ms, end_ms)."""
        return self._plan.between(start_ms, end_ms)

    # -- readings ------------------------------------------------------------------------------

    def readings(self, start_ms: int, end_ms: int, *, is_history: bool = False) -> pa.Table:
        """The delivered readings of [start_ms, end_ms), sorted by time, sensor and metric.

        A pure function of the options and the span: this is what ``read`` and ``history`` return
        (``is_history`` samples at the backfill rate).
        """
        sampling = self._history_sampling if is_history else self._sampling
        t, sensor = sampling.grid(start_ms, end_ms)
        if len(t) == 0:
            return empty_sample()
        faults = self._plan.between(start_ms, end_ms)
        keep = sampling.delivered(t, sensor)
        if faults:
            keep &= ~sensor_mask(self.plant, faults, "dropout", t, sensor)
        t, sensor = t[keep], sensor[keep]
        if len(t) == 0:
            return empty_sample()
        physics_t = t
        if faults:
            physics_t = frozen_time(self.plant, faults, sampling.period_ms, t, sensor)
            earliest = int(physics_t.min())
            if earliest < start_ms:  # a stuck sensor repeats a value from before the span
                faults = self._plan.between(earliest, end_ms)
        values = self._physics.values(physics_t, sensor, expose(self.plant, faults, physics_t, sensor))
        return self._table(t, sensor, values)

    def _table(self, t: np.ndarray, sensor: np.ndarray, values: np.ndarray) -> pa.Table:
        count = len(METRICS)
        sensors = self._sensor_names.take(pa.array(np.repeat(sensor.astype(np.int32), count)))
        metrics = self._metric_names.take(pa.array(np.tile(self._metric_pattern, len(t))))
        return pa.Table.from_arrays(
            [pa.array(np.repeat(t, count)), sensors, metrics, pa.array(values.reshape(-1))],
            schema=SAMPLE_SCHEMA,
        )

    def _write_log(self, around_ms: int) -> None:
        self._logged_week = week_of(around_ms)
        path = self.options.ground_truth
        if path is None:
            return
        weeks_back = 1 + math.ceil(self.options.backfill_days / 7)
        faults = self._plan.log(around_ms, weeks_back, _WEEKS_AHEAD_LOGGED)
        write_ground_truth(path, self.plant, faults)


def from_config(table: Mapping[str, Any], where: str, base_dir: Path) -> Simulator:
    """A simulator from one ``[[sources]]`` table of the gateway config (see ``TEMPLATE``)."""
    return Simulator(parse(table, where, base_dir), where=where)
