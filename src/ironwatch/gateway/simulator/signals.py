"""The physics of the sort center: every metric of every sample, computed on whole arrays.

Inputs are samples (a time and a sensor each) and their fault :class:`~.exposure.Exposure`; the
output is one row of the 17 metrics per sample. What drives the values:

* the hall: ambient temperature and humidity follow the day (warmest at 15:00) and a slower
  weather rhythm of several days; each line has its own spot in the hall (near the doors or not);
* the shift plan (:mod:`.shifts`): a stopped machine has no speed, no current and hardly any
  vibration, and cools towards the hall; after a start it warms up exponentially (time constant
  100-260 s, so 5-10 minutes to steady temperature) from whatever warmth was left since it stopped;
* the load: current grows with it, temperature with its square (copper losses), motor speed drops
  with it (induction motor slip), belt speed follows the motor through the gearbox and roller;
* noise and harmonics: vibration carries the belt's loop period and its second harmonic (the belt
  splice passing the rollers) and a slow beat with the neighbouring drives; every metric gets its
  own measurement noise, keyed by the sample (see :mod:`.noise`).

Values are rounded as a sensor node would report them. There is no Python loop over samples.
"""

from __future__ import annotations

import numpy as np

from ironwatch.gateway.simulator import noise
from ironwatch.gateway.simulator.exposure import Exposure
from ironwatch.gateway.simulator.plant import METRIC_INDEX, METRICS, Plant
from ironwatch.gateway.simulator.shifts import DAY_S, Shifts

_M = METRIC_INDEX
_SYNC_RPM = 1500.0  # a 4-pole motor on 50 Hz
_SOFT_START_S = 5.0
_STOPPED_ULTRASOUND_DB = 17.0
# Noise standard deviation per metric: absolute part plus relative part (of the value).
_NOISE_ABS = np.zeros(len(METRICS))
_NOISE_REL = np.zeros(len(METRICS))
for _name, _abs, _rel in (
    ("temperature_c", 0.08, 0.0),
    ("ambient_temperature_c", 0.05, 0.0),
    ("vibration_rms_x_mm_s", 0.0, 0.035),
    ("vibration_rms_y_mm_s", 0.0, 0.035),
    ("vibration_rms_z_mm_s", 0.0, 0.035),
    ("acceleration_peak_x_g", 0.0, 0.05),
    ("acceleration_peak_y_g", 0.0, 0.05),
    ("acceleration_peak_z_g", 0.0, 0.05),
    ("belt_speed_m_s", 0.0, 0.002),
    ("rpm", 0.0, 0.0004),
    ("voltage_v", 0.6, 0.0),
    ("current_a", 0.0, 0.01),
    ("kurtosis_x", 0.06, 0.0),
    ("crest_factor_x", 0.04, 0.0),
    ("ultrasound_db", 0.5, 0.0),
    ("humidity_pct", 0.3, 0.0),
):
    _NOISE_ABS[_M[_name]] = _abs
    _NOISE_REL[_M[_name]] = _rel
_DECIMALS = np.array([2, 2, 3, 3, 3, 3, 3, 3, 3, 1, 1, 2, 2, 3, 3, 1, 1])
_SCALE = 10.0**_DECIMALS
# A spike multiplies a reading by 3-8 and adds this much (so a spike shows even on a stopped machine).
_SPIKE_ADD = {
    "temperature_c": 20.0,
    "vibration_rms_x_mm_s": 8.0,
    "vibration_rms_y_mm_s": 8.0,
    "vibration_rms_z_mm_s": 8.0,
    "acceleration_peak_x_g": 3.0,
    "acceleration_peak_y_g": 3.0,
    "acceleration_peak_z_g": 3.0,
    "current_a": 10.0,
}
_SPIKE_COLUMNS = np.array([_M[m] for m in _SPIKE_ADD])
_SPIKE_OFFSETS = np.array(list(_SPIKE_ADD.values()))
_METRIC_COUNTER = np.arange(len(METRICS))
#: Sensor indexes are packed under the time in noise counters, so a plant has at most this many.
MAX_SENSORS = 1 << 16


class Physics:
    """Computes the 17 metrics of samples of one plant; holds no state that changes with time."""

    def __init__(self, plant: Plant, seed: int) -> None:
        self.plant = plant
        self.shifts = Shifts(plant)
        self.seed = seed

    def values(self, t_ms: np.ndarray, sensor: np.ndarray, ex: Exposure) -> np.ndarray:
        """Rows of the 17 metrics (in :data:`METRICS` order) for samples ``(t_ms, sensor)``."""
        p = self.plant
        n = len(t_ms)
        out = np.empty((n, len(METRICS)))
        out[:, _M["power_kw"]] = 0.0  # derived at the end from the reported voltage and current
        t = t_ms / 1000.0
        machine = p.sensor_machine[sensor]
        line = p.machine_line[machine]
        running, since_start, since_stop = self.shifts.state(machine, t)
        load = self.shifts.load(machine, t)
        ramp = np.clip(since_start / _SOFT_START_S, 0.0, 1.0) * running
        effective = load * running

        # The hall.
        hour = (t % DAY_S) / 3600.0
        daily = np.cos(2 * np.pi * (hour - 15.0) / 24.0)
        ambient = (
            20.5 + 2.6 * daily + 1.3 * np.sin(2 * np.pi * t / (5.3 * DAY_S)) + p.line_ambient_offset_k[line]
        )
        humidity = 47.0 - 8.0 * daily + 6.0 * np.sin(2 * np.pi * t / (3.7 * DAY_S) + 1.0)
        out[:, _M["ambient_temperature_c"]] = ambient
        out[:, _M["humidity_pct"]] = humidity + p.line_humidity_offset_pct[line]

        # The drive: speed drops with load (slip); the belt slips a little on the roller, more with a fault.
        rpm = _SYNC_RPM * (1.0 - p.machine_rated_slip[machine] * (0.3 + 0.7 * load)) * ramp
        stick = noise.uniform(noise.key(self.seed, noise.SLIP, t_ms * MAX_SENSORS + sensor))
        belt_slip = 0.002 + 0.004 * load + ex.slip * (0.06 + 0.12 * load) * (0.6 + 0.8 * stick)
        roller = p.machine_roller_d_m[machine] * np.pi / 60.0 / p.machine_gear_ratio[machine]
        out[:, _M["rpm"]] = rpm
        out[:, _M["belt_speed_m_s"]] = rpm * roller * (1.0 - belt_slip)
        out[:, _M["voltage_v"]] = 400.0 + p.line_voltage_offset_v[line] - 3.5 * effective - 1.5 * daily
        fluctuation = 1.0 + 0.04 * ex.misalignment + ex.slip * 0.3 * (stick - 0.5)
        out[:, _M["current_a"]] = (
            ramp * p.machine_rated_current_a[machine] * (0.35 + 0.65 * load) * fluctuation
        )

        # Temperature: copper losses go with the current squared; warm-up and cool-down are exponential
        # from the last start and stop, starting from the warmth left over (closed form, no integration).
        extra = 25.0 * ex.overheating + 14.0 * ex.wear + 7.0 * ex.misalignment
        rise_now = p.sensor_rise_k[sensor] * (0.35 + 0.65 * load) ** 2 + extra
        load_at_stop = self.shifts.load(machine, t - since_stop)
        rise_at_stop = p.sensor_rise_k[sensor] * (0.35 + 0.65 * load_at_stop) ** 2 + extra
        cool = p.sensor_cool_tau_s[sensor]
        left_at_start = rise_at_stop * np.exp(-np.maximum(since_stop - since_start, 0.0) / cool)
        warming = rise_now + (left_at_start - rise_now) * np.exp(-since_start / p.sensor_warm_tau_s[sensor])
        rise = np.where(running, warming, rise_at_stop * np.exp(-since_stop / cool))
        out[:, _M["temperature_c"]] = ambient + rise

        # Vibration: the belt loop and its 2x harmonic, a slow beat with the neighbours, and faults.
        loop = 2 * np.pi * t / p.machine_belt_loop_s[machine]
        phase = p.sensor_harmonic_phase[sensor]
        harmonics = (
            1.0
            + 0.12 * np.sin(loop + phase[:, 0])
            + 0.05 * np.sin(2 * loop + phase[:, 1])
            + 0.07 * np.sin(2 * np.pi * t / p.machine_beat_s[machine] + phase[:, 2])
        )
        level = (ramp * (0.55 + 0.45 * load) * harmonics)[:, None] * p.sensor_vibration_mm_s[sensor]
        twice = 1.0 + 0.3 * np.sin(2 * loop)  # misalignment beats at twice the rhythm
        level[:, 0] *= 1.0 + 3.0 * ex.wear
        level[:, 1] *= 1.0 + 2.4 * ex.wear + 2.5 * ex.misalignment * twice
        level[:, 2] *= 1.0 + 1.6 * ex.wear + 1.5 * ex.misalignment * twice
        level += p.sensor_background_mm_s[sensor][:, None] * np.array([1.0, 0.9, 0.6])
        accel = level * p.sensor_accel_per_mm_s[sensor] * (1.0 + 2.5 * ex.wear)[:, None]
        out[:, _M["vibration_rms_x_mm_s"] : _M["vibration_rms_z_mm_s"] + 1] = level
        out[:, _M["acceleration_peak_x_g"] : _M["acceleration_peak_z_g"] + 1] = accel

        out[:, _M["kurtosis_x"]] = p.sensor_kurtosis[sensor] + 4.5 * ex.wear_early + 6.0 * ex.wear
        out[:, _M["crest_factor_x"]] = p.sensor_crest[sensor] + 1.2 * ex.wear_early + 2.0 * ex.wear
        sound = p.sensor_ultrasound_db[sensor] + 3.0 * load + 14.0 * ex.wear_early + 6.0 * ex.wear
        sound += 4.0 * ex.misalignment
        out[:, _M["ultrasound_db"]] = np.where(running, sound, _STOPPED_ULTRASOUND_DB)

        if ex.misplaced.any():
            self._on_the_fan(out, ex.misplaced, sensor, ambient, effective, ramp, rpm)
        self._add_noise(out, t_ms, sensor)
        out[:, _M["temperature_c"]] += 12.0 * ex.drift
        out[:, _M["vibration_rms_x_mm_s"]] *= 1.0 + 0.6 * ex.drift
        if ex.spike.any():
            self._spike(out, t_ms, sensor, ex.spike)
        np.maximum(out, 0.0, out=out)
        np.minimum(out[:, _M["humidity_pct"]], 100.0, out=out[:, _M["humidity_pct"]])
        out *= _SCALE
        np.round(out, out=out)
        out /= _SCALE
        # Power as a power meter derives it from the reported voltage and current.
        factor = 0.72 + 0.14 * load
        watts = np.sqrt(3.0) * out[:, _M["voltage_v"]] * out[:, _M["current_a"]] * factor
        out[:, _M["power_kw"]] = np.round(watts / 10.0) / 100.0
        return out

    def _on_the_fan(
        self,
        out: np.ndarray,
        rows: np.ndarray,
        sensor: np.ndarray,
        ambient: np.ndarray,
        effective: np.ndarray,
        ramp: np.ndarray,
        rpm: np.ndarray,
    ) -> None:
        """A node on the fan cowl: air a little warmer than the hall, the fan's vibration, airflow hiss."""
        p = self.plant
        s = sensor[rows]
        out[rows, _M["temperature_c"]] = ambient[rows] + 1.5 * effective[rows]
        fan = (p.sensor_fan_mm_s[s] * rpm[rows] / _SYNC_RPM)[:, None] * np.array([1.0, 0.9, 0.5])
        fan += p.sensor_background_mm_s[s][:, None]
        out[rows, _M["vibration_rms_x_mm_s"] : _M["vibration_rms_z_mm_s"] + 1] = fan
        out[rows, _M["acceleration_peak_x_g"] : _M["acceleration_peak_z_g"] + 1] = fan * 0.6
        out[rows, _M["kurtosis_x"]] = 2.7
        out[rows, _M["crest_factor_x"]] = 2.5
        out[rows, _M["ultrasound_db"]] = np.where(
            ramp[rows] > 0, 36.0 + 5.0 * effective[rows], _STOPPED_ULTRASOUND_DB
        )

    def _add_noise(self, out: np.ndarray, t_ms: np.ndarray, sensor: np.ndarray) -> None:
        """Measurement noise, keyed by (time, sensor, metric): the same in any chunking."""
        keys = noise.key(self.seed, noise.NOISE, t_ms * MAX_SENSORS + sensor)
        z = noise.normal(noise.combine(keys[:, None], _METRIC_COUNTER[None, :]))
        out += z * (_NOISE_ABS + _NOISE_REL * np.abs(out))

    def _spike(self, out: np.ndarray, t_ms: np.ndarray, sensor: np.ndarray, severity: np.ndarray) -> None:
        """Occasional single readings several times too high, more often the worse the fault."""
        rows = np.flatnonzero(severity > 0)
        keys = noise.key(self.seed, noise.SPIKE, t_ms[rows] * MAX_SENSORS + sensor[rows])
        hashes = noise.combine(keys[:, None], _SPIKE_COLUMNS[None, :])
        hit = noise.uniform(hashes) < (0.01 + 0.05 * severity[rows])[:, None]
        size = 3.0 + 5.0 * noise.low32(hashes)
        block = out[np.ix_(rows, _SPIKE_COLUMNS)]
        out[np.ix_(rows, _SPIKE_COLUMNS)] = np.where(hit, block * size + _SPIKE_OFFSETS, block)
