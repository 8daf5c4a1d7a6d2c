"""The layout of the simulated sort center: lines, machines, components and the sensors on them.

A sort center is a hall of conveyor lines. Each line is a chain of conveyor machines (a drive motor,
a gearbox, the motor's drive-end and non-drive-end bearings and the drive roller that pulls the
belt), and each of those components carries one multi-metric sensor node. Sensor ``s-0001`` sits on
the motor of the first machine of ``line-01``, ``s-0002`` on its gearbox, and so on: five sensors
per machine, ten machines per line.

The plant is drawn once from the seed: every machine gets its own motor, gear ratio and roller, and
every sensor its own levels and sampling phase. Nothing here changes with time; time lives in
:mod:`.shifts` and :mod:`.signals`. :meth:`Plant.spots` lists where each sensor is, so an asset
registry can read the layout without knowing how it was drawn.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: The metrics every sensor reports, in this order in every array of the simulator.
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
METRIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(METRICS)}

#: Component kinds of a conveyor machine, one sensor on each, in the order sensors are numbered.
COMPONENTS: tuple[str, ...] = ("motor", "gearbox", "bearing_de", "bearing_nde", "roller")
MOTOR, GEARBOX, BEARING_DE, BEARING_NDE, ROLLER = range(len(COMPONENTS))
MACHINES_PER_LINE = 10

# How warm each component runs at full load above the hall (K), how fast it warms up after a start
# (time constant, s: 95% after 3 of them, so 5-10 minutes for a motor) and how strongly it vibrates.
_RISE_K = np.array([[34.0, 46.0], [22.0, 30.0], [16.0, 24.0], [13.0, 20.0], [5.0, 10.0]])
_WARM_TAU_S = np.array([[100.0, 200.0], [160.0, 260.0], [120.0, 220.0], [120.0, 220.0], [90.0, 160.0]])
_VIBRATION_MM_S = np.array([[1.2, 2.6], [1.6, 3.4], [1.0, 2.4], [0.8, 2.0], [0.6, 1.6]])
_ULTRASOUND_DB = np.array([[30.0, 36.0], [33.0, 40.0], [28.0, 34.0], [27.0, 33.0], [25.0, 31.0]])


@dataclasses.dataclass(frozen=True)
class Spot:
    """Where one sensor is mounted: its line, machine and the component kind it watches."""

    sensor: str
    line: str
    machine: str
    component: str


class Plant:
    """``sensors`` sensor nodes on conveyor machines, with every parameter drawn from ``seed``.

    Per-sensor arrays are indexed by the sensor's position (``s-0001`` is 0); per-machine arrays by
    the machine's position. They are read-only numpy arrays, shared by every computation.
    """

    def __init__(self, sensors: int, seed: int) -> None:
        if sensors < 1:
            raise ValueError("a plant needs at least one sensor")
        rng = np.random.default_rng([seed, 0x9A17])
        per_machine = len(COMPONENTS)
        machines = -(-sensors // per_machine)
        lines = -(-machines // MACHINES_PER_LINE)
        self.sensor_ids: tuple[str, ...] = tuple(f"s-{i:04d}" for i in range(1, sensors + 1))
        self.machine_ids: tuple[str, ...] = tuple(f"m-{i:03d}" for i in range(1, machines + 1))
        self.line_ids: tuple[str, ...] = tuple(f"line-{i:02d}" for i in range(1, lines + 1))

        index = np.arange(sensors)
        self.sensor_machine = index // per_machine
        self.sensor_component = index % per_machine
        self.machine_line = np.arange(machines) // MACHINES_PER_LINE
        self.machine_position = np.arange(machines) % MACHINES_PER_LINE
        self.sensor_line = self.machine_line[self.sensor_machine]

        # Lines: every third runs a night shift for the inbound trucks; the doors make some colder.
        self.line_has_night_shift = (np.arange(lines) % 3) == 2
        self.line_start_offset_s = np.arange(lines) * 90.0 + rng.uniform(0, 60, lines)
        self.line_ambient_offset_k = rng.normal(0.0, 1.0, lines)
        self.line_humidity_offset_pct = rng.normal(0.0, 2.0, lines)
        self.line_voltage_offset_v = rng.normal(0.0, 1.5, lines)
        self.line_load_base = rng.uniform(0.45, 0.7, lines)
        self.line_wander_period_s = rng.uniform(23 * 60, 47 * 60, lines)
        self.line_wander_phase = rng.uniform(0, 2 * np.pi, lines)

        # Machines: 4-pole motors on a 50 Hz supply, geared down to a drive roller pulling the belt.
        # A conveyor starts downstream first, so each machine starts a few seconds after the one
        # before it.
        self.machine_start_delay_s = self.machine_position * 4.0
        self.machine_rated_current_a = rng.uniform(8.0, 42.0, machines)
        self.machine_rated_slip = rng.uniform(0.018, 0.032, machines)
        self.machine_gear_ratio = rng.uniform(12.0, 22.0, machines)
        belt_speed = rng.uniform(1.4, 2.6, machines)
        # The roller diameter is whatever gives the nominal belt speed at the nominal motor speed.
        self.machine_roller_d_m = belt_speed * 60.0 * self.machine_gear_ratio / (np.pi * 1450.0)
        self.machine_belt_loop_s = rng.uniform(14.0, 40.0, machines)
        self.machine_beat_s = rng.uniform(45.0, 150.0, machines)
        self.machine_load_offset = rng.normal(0.0, 0.06, machines)

        # Sensors: their component decides the level; each node has its own offsets and phase.
        kind = self.sensor_component
        self.sensor_rise_k = _draw(rng, _RISE_K[kind])
        self.sensor_warm_tau_s = _draw(rng, _WARM_TAU_S[kind])
        self.sensor_cool_tau_s = self.sensor_warm_tau_s * rng.uniform(5.0, 8.0, sensors)
        vibration = _draw(rng, _VIBRATION_MM_S[kind])
        # Radial axes (x, y) vibrate more than the axial one (z).
        self.sensor_vibration_mm_s = vibration[:, None] * np.column_stack(
            [np.ones(sensors), rng.uniform(0.75, 1.05, sensors), rng.uniform(0.45, 0.75, sensors)]
        )
        self.sensor_accel_per_mm_s = rng.uniform(0.25, 0.45, (sensors, 3))
        self.sensor_background_mm_s = rng.uniform(0.04, 0.14, sensors)
        self.sensor_ultrasound_db = _draw(rng, _ULTRASOUND_DB[kind])
        self.sensor_kurtosis = rng.uniform(2.85, 3.2, sensors)
        self.sensor_crest = rng.uniform(2.9, 3.5, sensors)
        self.sensor_fan_mm_s = rng.uniform(1.4, 2.6, sensors)
        self.sensor_harmonic_phase = rng.uniform(0, 2 * np.pi, (sensors, 3))
        #: Where in the sampling period each sensor reads (fraction of the period).
        self.sensor_phase = rng.random(sensors)
        #: Share of its readings each sensor's link delivers, before the delivery option scales it.
        self.sensor_link_quality = rng.beta(1.6, 1.1, sensors)
        self.sensor_burst_s = rng.uniform(20.0, 180.0, sensors)
        self.sensor_burst_offset_s = rng.uniform(0.0, 180.0, sensors)
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        self._index = {s: i for i, s in enumerate(self.sensor_ids)}

    @property
    def sensor_count(self) -> int:
        """How many sensors the plant has."""
        return len(self.sensor_ids)

    def phase_ms(self, period_ms: int) -> np.ndarray:
        """Each sensor's offset (ms) within a sampling period of ``period_ms``."""
        return np.floor(self.sensor_phase * period_ms).astype(np.int64)

    def spot(self, index: int) -> Spot:
        """Where the sensor at ``index`` (``s-0001`` is 0) is mounted."""
        machine = int(self.sensor_machine[index])
        return Spot(
            sensor=self.sensor_ids[index],
            line=self.line_ids[int(self.machine_line[machine])],
            machine=self.machine_ids[machine],
            component=COMPONENTS[int(self.sensor_component[index])],
        )

    def spots(self) -> list[Spot]:
        """Every sensor with its line, machine and component, in sensor order."""
        return [self.spot(i) for i in range(self.sensor_count)]

    def sensor_index(self, sensor: str) -> int:
        """Position of a sensor id; raises ``KeyError`` for an id the plant does not have."""
        return self._index[sensor]


def _draw(rng: np.random.Generator, bounds: np.ndarray) -> np.ndarray:
    """One uniform draw per row of ``bounds`` (rows of ``[low, high]``)."""
    drawn: np.ndarray = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * rng.random(len(bounds))
    return drawn
