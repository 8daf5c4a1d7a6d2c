"""When sensors sample, and which of their readings actually arrive.

Each sensor samples every ``period_ms`` at its own phase within the period, so a site's readings
are spread evenly instead of arriving all at once. A sample is delivered or not by the link model:
time is cut into bursts of 20 s to 3 min per sensor; in a good burst nearly every sample arrives,
in a bad one nearly none. How often a sensor's bursts are good is set so that its share of delivered
samples is its link quality: a few sensors deliver nearly everything, most about half, some little.
All of it is keyed by the sample itself (see :mod:`.noise`), so any way of cutting time into reads
gives the same samples.
"""

from __future__ import annotations

import numpy as np

from ironwatch.gateway.simulator import noise
from ironwatch.gateway.simulator.plant import Plant
from ironwatch.gateway.simulator.signals import MAX_SENSORS

#: Delivery within a good and a bad burst, for sensors whose share lies between the two.
_GOOD = 0.97
_BAD = 0.03


class Sampling:
    """The sample grid of a plant at one period, and its delivery model."""

    def __init__(self, plant: Plant, seed: int, period_ms: int, delivery: float) -> None:
        self.plant = plant
        self.seed = seed
        self.period_ms = period_ms
        self.phase_ms = plant.phase_ms(period_ms)
        # Sensors ordered by phase, then id: walking the grid row by row is then walking time.
        self._order = np.lexsort((np.arange(plant.sensor_count), self.phase_ms))
        self._ordered_phase = self.phase_ms[self._order]
        self.share = _shares(plant.sensor_link_quality, delivery)
        self._good = np.maximum(self.share, _GOOD)
        self._bad = np.minimum(self.share, _BAD)
        spread = self._good - self._bad
        self._good_burst = np.where(spread > 0, (self.share - self._bad) / np.where(spread > 0, spread, 1), 1)
        self._burst_ms = np.round(plant.sensor_burst_s * 1000).astype(np.int64)
        self._burst_offset_ms = np.round(plant.sensor_burst_offset_s * 1000).astype(np.int64)

    def grid(self, start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Every sample in [start_ms, end_ms), as ``(t_ms, sensor)`` sorted by time, then sensor."""
        if end_ms <= start_ms:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        period = self.period_ms
        first = (start_ms - period) // period
        last = end_ms // period
        ticks = np.arange(first, last + 1, dtype=np.int64)
        t = ticks[:, None] * period + self._ordered_phase[None, :]
        inside = (t >= start_ms) & (t < end_ms)
        sensor = np.broadcast_to(self._order, t.shape)
        return t[inside], sensor[inside]

    def delivered(self, t_ms: np.ndarray, sensor: np.ndarray) -> np.ndarray:
        """Whether each sample reaches the gateway (before any dropout fault)."""
        burst = (t_ms + self._burst_offset_ms[sensor]) // self._burst_ms[sensor]
        good = noise.uniform(noise.key(self.seed, noise.BURST, burst * MAX_SENSORS + sensor))
        chance = np.where(good < self._good_burst[sensor], self._good[sensor], self._bad[sensor])
        draw = noise.uniform(noise.key(self.seed, noise.DELIVERY, t_ms * MAX_SENSORS + sensor))
        delivered: np.ndarray = draw < chance
        return delivered


def _shares(quality: np.ndarray, delivery: float) -> np.ndarray:
    """Each sensor's delivered share: its link quality rescaled so the site's mean is ``delivery``."""
    if delivery >= 1.0:
        return np.ones_like(quality)
    if delivery <= 0.0:
        return np.zeros_like(quality)
    # A power transform keeps shares in [0, 1] and their order; bisect on the exponent for the mean.
    low, high = -8.0, 8.0
    for _ in range(60):
        mid = (low + high) / 2
        if float(np.mean(quality ** np.exp(mid))) > delivery:
            low = mid
        else:
            high = mid
    shares: np.ndarray = np.clip(quality ** np.exp((low + high) / 2), 0.0, 1.0)
    return shares
