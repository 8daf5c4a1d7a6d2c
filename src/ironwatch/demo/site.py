"""A synthetic site for the demo: sensors that each report 17 metrics at a fixed period.

Values are plausible levels for motors and belt conveyors in a hall, moved by a slow load cycle of
each machine and by the hall's own climate, plus noise. A few machines wear out slowly and are
"repaired" every few hours (a sawtooth in vibration, temperature, kurtosis and ultrasound), so later
rules and models have something to find. Everything is a function of absolute time and a fixed seed,
so a restarted demo continues the same curves. Readings are built with numpy over whole windows:
there is no Python loop per reading.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: The metrics every demo sensor reports, as the gateway issue names them.
METRICS: tuple[str, ...] = (
    "temperature_c",
    "ambient_temperature_c",
    "vibration_rms_x_mm_s",
    "vibration_rms_y_mm_s",
    "vibration_rms_z_mm_s",
    "acceleration_peak_x_g",
    "acceleration_peak_y_g",
    "acceleration_peak_z_g",
    "belt_speed_m_s",
    "rpm",
    "voltage_v",
    "current_a",
    "power_kw",
    "kurtosis_x",
    "crest_factor_x",
    "ultrasound_db",
    "humidity_pct",
)


@dataclasses.dataclass(frozen=True)
class _Spec:
    low: float  # range of a machine's typical level
    high: float
    swing: float  # fraction of the level moved by the driver (load or hall climate)
    noise: float  # standard deviation, as a fraction of the level
    driver: str  # "load" (the machine's own cycle) or "hall" (the climate of the hall)
    decimals: int


_SPECS: dict[str, _Spec] = {
    "temperature_c": _Spec(38, 68, 0.05, 0.004, "load", 2),
    "ambient_temperature_c": _Spec(19, 24, 0.06, 0.004, "hall", 2),
    "vibration_rms_x_mm_s": _Spec(0.8, 3.5, 0.12, 0.04, "load", 3),
    "vibration_rms_y_mm_s": _Spec(0.8, 3.5, 0.12, 0.04, "load", 3),
    "vibration_rms_z_mm_s": _Spec(0.5, 2.5, 0.12, 0.04, "load", 3),
    "acceleration_peak_x_g": _Spec(0.3, 1.8, 0.10, 0.05, "load", 3),
    "acceleration_peak_y_g": _Spec(0.3, 1.8, 0.10, 0.05, "load", 3),
    "acceleration_peak_z_g": _Spec(0.2, 1.2, 0.10, 0.05, "load", 3),
    "belt_speed_m_s": _Spec(1.2, 3.2, 0.015, 0.004, "load", 3),
    "rpm": _Spec(1440, 1490, -0.005, 0.001, "load", 1),  # an induction motor slips under load
    "voltage_v": _Spec(396, 404, -0.004, 0.002, "load", 1),
    "current_a": _Spec(12, 60, 0.20, 0.01, "load", 2),
    "power_kw": _Spec(0, 0, 0, 0, "load", 2),  # computed from voltage and current
    "kurtosis_x": _Spec(2.8, 3.3, 0.03, 0.04, "load", 3),
    "crest_factor_x": _Spec(2.9, 3.6, 0.03, 0.02, "load", 3),
    "ultrasound_db": _Spec(28, 42, 0.05, 0.025, "load", 1),
    "humidity_pct": _Spec(38, 55, -0.12, 0.01, "hall", 1),
}

_POWER_FACTOR = 0.85
_HALL_CYCLE_S = 3 * 3600.0
_WEAR_CYCLE_S = 8 * 3600.0
#: How much a worn machine's metrics rise at the end of a wear cycle (fraction of the level, or offset).
_WEAR_GAIN = {
    "vibration_rms_x_mm_s": 1.5,
    "vibration_rms_y_mm_s": 1.2,
    "vibration_rms_z_mm_s": 0.8,
    "acceleration_peak_x_g": 1.0,
    "temperature_c": 0.15,
    "kurtosis_x": 1.0,
    "crest_factor_x": 0.4,
    "ultrasound_db": 0.3,
}


@dataclasses.dataclass(frozen=True)
class Window:
    """Readings of one time window, in columns: ``ts`` (epoch ms), ``sensor``, ``metric``, ``value``."""

    ts_ms: np.ndarray
    sensor: list[str]
    metric: list[str]
    value: np.ndarray

    @property
    def count(self) -> int:
        return len(self.value)


class Site:
    """``count`` sensors named ``s-0001``... that each report every metric once per ``period_ms``."""

    def __init__(self, count: int, *, period_ms: int = 1000, seed: int = 7) -> None:
        if count < 1:
            raise ValueError("a site needs at least one sensor")
        self.period_ms = period_ms
        self.sensors = tuple(f"s-{i:04d}" for i in range(1, count + 1))
        rng = np.random.default_rng(seed)
        specs = [_SPECS[m] for m in METRICS]
        low = np.array([s.low for s in specs])
        high = np.array([s.high for s in specs])
        self._level = low + (high - low) * rng.random((count, len(METRICS)))
        self._swing = np.array([s.swing for s in specs])
        self._noise = np.array([s.noise for s in specs]) * self._level
        self._is_hall = np.array([s.driver == "hall" for s in specs])
        self._scale = 10.0 ** np.array([s.decimals for s in specs])
        self._cycle_s = rng.uniform(8 * 60, 40 * 60, count)
        self._phase = rng.uniform(0, 2 * np.pi, count)
        # One machine in 25 wears out; each starts its wear cycle at a different moment.
        self._is_worn = (np.arange(count) % 25) == 12
        self._wear_offset_s = rng.uniform(0, _WEAR_CYCLE_S, count)
        self._wear_gain = np.array([_WEAR_GAIN.get(m, 0.0) for m in METRICS])
        self._noise_rng = np.random.default_rng()
        # The sensor and metric columns repeat the same pattern at every timestamp.
        self._sensor_pattern = [s for s in self.sensors for _ in METRICS]
        self._metric_pattern = list(METRICS) * count

    @property
    def readings_per_period(self) -> int:
        return len(self.sensors) * len(METRICS)

    def timestamps(self, after_ms: int, until_ms: int) -> np.ndarray:
        """Sample times (epoch ms, multiples of the period) in ``(after_ms, until_ms]``."""
        first = (after_ms // self.period_ms + 1) * self.period_ms
        return np.arange(first, until_ms + 1, self.period_ms, dtype=np.int64)

    def window(self, ts_ms: np.ndarray) -> Window:
        """Every sensor's every metric at each of the times ``ts_ms``."""
        t = ts_ms.astype(np.float64)[:, None] / 1000.0  # (T, 1) seconds
        load = np.sin(2 * np.pi * t / self._cycle_s + self._phase)  # (T, S)
        hall = np.sin(2 * np.pi * t / _HALL_CYCLE_S)  # (T, 1), the same for the whole hall
        driver = np.where(self._is_hall, hall[:, :, None], load[:, :, None])  # (T, S, M)
        values = self._level * (1 + self._swing * driver)
        values += self._noise * self._noise_rng.standard_normal(values.shape)
        wear = ((t + self._wear_offset_s) % _WEAR_CYCLE_S) / _WEAR_CYCLE_S * self._is_worn  # (T, S)
        values *= 1 + self._wear_gain * (wear**2)[:, :, None]
        np.maximum(values, 0.0, out=values)
        humidity = METRICS.index("humidity_pct")
        values[:, :, humidity] = np.minimum(values[:, :, humidity], 100.0)
        values = np.round(values * self._scale) / self._scale
        # Power follows from the voltage and current as reported, as a power meter's would.
        volts, amps, power = (METRICS.index(m) for m in ("voltage_v", "current_a", "power_kw"))
        watts = np.sqrt(3) * values[:, :, volts] * values[:, :, amps] * _POWER_FACTOR
        values[:, :, power] = np.round(watts / 10) / 100
        n = len(ts_ms)
        return Window(
            ts_ms=np.repeat(ts_ms, self.readings_per_period),
            sensor=self._sensor_pattern * n,
            metric=self._metric_pattern * n,
            value=values.reshape(-1),
        )
