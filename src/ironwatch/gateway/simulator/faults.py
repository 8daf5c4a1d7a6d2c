"""Faults the simulator can inject, the default plan drawn from the seed, and the ground-truth log.

Machine faults (``bearing_wear``, ``misalignment``, ``overheating``, ``belt_slip``) change what a
machine does, so every sensor on that machine sees them, the named sensor most. Sensor faults
(``stuck``, ``dropout``, ``drift``, ``spike``, ``misplaced``) change only what one sensor reports.
How each one moves the values is in :mod:`.exposure` and :mod:`.signals`; this module says which
faults exist when, and writes them down so that rules and models can be scored against the truth.

The default plan is drawn week by week (weeks start Monday 00:00 UTC) from the seed alone, so at any
moment some faults are active, some just ended and some are on their way, wherever the simulation
starts, and a restarted simulator finds the same faults at the same times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ironwatch.gateway.simulator.plant import (
    BEARING_DE,
    BEARING_NDE,
    COMPONENTS,
    GEARBOX,
    MOTOR,
    ROLLER,
    Plant,
)
from ironwatch.gateway.simulator.shifts import DAY_S, WEEK_S

_VIBRATION = ("vibration_rms_x_mm_s", "vibration_rms_y_mm_s", "vibration_rms_z_mm_s")
_ACCELERATION = ("acceleration_peak_x_g", "acceleration_peak_y_g", "acceleration_peak_z_g")


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a fault kind is: machine or sensor scope, the metrics it moves, and a description."""

    name: str
    scope: str  # "machine" or "sensor"
    metrics: tuple[str, ...]
    description: str  # formatted with sensor, machine and component


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "bearing_wear",
            "machine",
            (*_VIBRATION, *_ACCELERATION, "kurtosis_x", "crest_factor_x", "ultrasound_db", "temperature_c"),
            "bearing wear at the {component} of {machine}: ultrasound and kurtosis rise first, then "
            "vibration, crest factor and temperature, faster and faster until the end",
        ),
        Kind(
            "misalignment",
            "machine",
            (
                "vibration_rms_y_mm_s",
                "vibration_rms_z_mm_s",
                "acceleration_peak_y_g",
                "acceleration_peak_z_g",
                "ultrasound_db",
                "temperature_c",
                "current_a",
            ),
            "shaft misalignment at the {component} of {machine}: radial (y) and axial (z) vibration with a "
            "2x rhythm, a warmer coupling, more ultrasound and a little more current",
        ),
        Kind(
            "overheating",
            "machine",
            ("temperature_c",),
            "overheating of the {component} of {machine} (blocked cooling): temperature climbs over half an "
            "hour and stays high while the machine runs",
        ),
        Kind(
            "belt_slip",
            "machine",
            ("belt_speed_m_s", "current_a", "power_kw"),
            "belt slip on {machine}: belt speed below what the motor speed implies, worse under load, "
            "and a fluctuating current",
        ),
        Kind("stuck", "sensor", ("*",), "sensor {sensor} stuck: every metric frozen at its last value"),
        Kind("dropout", "sensor", ("*",), "sensor {sensor} silent: no readings at all"),
        Kind(
            "drift",
            "sensor",
            ("temperature_c", "vibration_rms_x_mm_s"),
            "sensor {sensor} drifting: a growing temperature offset and x vibration gain",
        ),
        Kind(
            "spike",
            "sensor",
            ("temperature_c", *_VIBRATION, *_ACCELERATION, "current_a"),
            "sensor {sensor} spiking: occasional single readings several times too high",
        ),
        Kind(
            "misplaced",
            "sensor",
            ("temperature_c", *_VIBRATION, *_ACCELERATION, "kurtosis_x", "crest_factor_x", "ultrasound_db"),
            "sensor {sensor} mounted on the fan cowl of {machine}, not on the {component}: temperature "
            "near the hall's, vibration and airflow noise of the fan, blind to the machine's faults",
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` on ``sensor`` (its machine, for a machine fault) in [start, end)."""

    kind: str
    sensor: str
    start_ms: int
    end_ms: int
    severity: float  # 0 (none) to 1 (as bad as the simulator makes it)

    def record(self, plant: Plant) -> dict[str, Any]:
        """The ground-truth line of this fault (times as RFC 3339 UTC)."""
        spot = plant.spot(plant.sensor_index(self.sensor))
        kind = KINDS[self.kind]
        return {
            "kind": self.kind,
            "sensor": self.sensor,
            "machine": spot.machine,
            "line": spot.line,
            "component": spot.component,
            "scope": kind.scope,
            "start": rfc3339(self.start_ms),
            "end": rfc3339(self.end_ms),
            "severity": self.severity,
            "metrics": list(kind.metrics),
            "description": kind.description.format(
                sensor=self.sensor, machine=spot.machine, component=spot.component
            ),
        }


def rfc3339(ms: int) -> str:
    """Epoch milliseconds as an RFC 3339 UTC time (``2026-11-24T10:00:00Z``, milliseconds if any)."""
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def week_of(ms: int) -> int:
    """Index of the plan week (Monday 00:00 UTC to the next) that contains ``ms``."""
    return int((ms / 1000 + 3 * DAY_S) // WEEK_S)


class Plan:
    """Which faults exist: none, a fixed list, or the default plan drawn from the seed week by week."""

    def __init__(self, plant: Plant, seed: int, faults: str | tuple[Fault, ...]) -> None:
        self._plant = plant
        self._seed = seed
        self._fixed: tuple[Fault, ...] = () if isinstance(faults, str) else faults
        self.is_default = faults == "default"
        self._weeks: dict[int, tuple[Fault, ...]] = {}

    def between(self, start_ms: int, end_ms: int) -> list[Fault]:
        """Faults active at some moment of [start_ms, end_ms)."""
        candidates: list[Fault] = list(self._fixed)
        if self.is_default:
            # A default fault ends less than a week after its own week and starts at most a day
            # before it, so one week on either side suffices.
            for week in range(week_of(start_ms) - 1, week_of(end_ms) + 2):
                candidates.extend(self.week(week))
        return [f for f in candidates if f.start_ms < end_ms and f.end_ms > start_ms]

    def log(self, around_ms: int, weeks_back: int, weeks_ahead: int) -> list[Fault]:
        """Every fault of the plan near ``around_ms`` (all of a fixed list), sorted by start."""
        faults = list(self._fixed)
        if self.is_default:
            now = week_of(around_ms)
            for week in range(now - weeks_back, now + weeks_ahead + 1):
                faults.extend(self.week(week))
        return sorted(faults, key=lambda f: (f.start_ms, f.sensor, f.kind))

    def week(self, week: int) -> tuple[Fault, ...]:
        """The default plan's faults that start in plan week ``week``."""
        if week not in self._weeks:
            self._weeks[week] = _draw_week(self._plant, self._seed, week)
        return self._weeks[week]


def _draw_week(plant: Plant, seed: int, week: int) -> tuple[Fault, ...]:
    """A week of faults on distinct machines, spread so that some are active at any moment."""
    rng = np.random.default_rng([seed, 0xFA17, week])
    week_ms = int((week * WEEK_S - 3 * DAY_S) * 1000)
    scale = max(1, round(plant.sensor_count / 550))
    machines = iter(np.tile(rng.permutation(len(plant.machine_ids)), 4 * scale + 16))
    faults: list[Fault] = []

    def add(kind: str, component: int, start_d: float, hours: float, low: float = 0.5) -> Fault:
        machine = int(next(machines))
        sensor = min(machine * len(COMPONENTS) + component, plant.sensor_count - 1)
        start = week_ms + int(start_d * DAY_S) * 1000
        fault = Fault(kind, plant.sensor_ids[sensor], start, start + int(hours * 3600) * 1000, 0.0)
        fault = dataclasses.replace(fault, severity=round(float(rng.uniform(low, 1.0)), 2))
        faults.append(fault)
        return fault

    for _ in range(scale):
        # Two bearing wears, half a week apart and each 3.5-5 days long, overlap: one always grows.
        first = add("bearing_wear", BEARING_DE, rng.uniform(0, 0.5), rng.uniform(84, 120), 0.7)
        add("bearing_wear", BEARING_NDE, rng.uniform(3.5, 4.0), rng.uniform(84, 120), 0.7)
        add("misalignment", int(rng.choice([MOTOR, GEARBOX])), rng.uniform(0, 5), rng.uniform(12, 72))
        for _ in range(2):
            add("overheating", MOTOR, rng.uniform(0, 6.5), rng.uniform(2, 12))
            add("belt_slip", ROLLER, rng.uniform(0, 6.5), rng.uniform(1, 8))
            add("dropout", int(rng.integers(5)), rng.uniform(0, 6.5), rng.uniform(0.5, 6))
        add("stuck", int(rng.integers(5)), rng.uniform(0, 6.5), rng.uniform(1, 12))
        add("drift", int(rng.integers(5)), rng.uniform(0, 5), rng.uniform(24, 72))
        add("spike", int(rng.integers(5)), rng.uniform(0, 6), rng.uniform(6, 48))
        # The classic: the node meant for the worn bearing was put on the fan cowl, so it misses it.
        lead_ms = int(rng.uniform(0, DAY_S)) * 1000
        tail_ms = int(rng.uniform(0, DAY_S)) * 1000
        faults.append(
            Fault(
                "misplaced",
                first.sensor,
                first.start_ms - lead_ms,
                first.end_ms + tail_ms,
                round(float(rng.uniform(0.5, 1.0)), 2),
            )
        )
    return tuple(faults)


def write_ground_truth(path: Path, plant: Plant, faults: list[Fault]) -> None:
    """Write one JSON line per fault, replacing the file in one step (readers never see half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(f.record(plant), sort_keys=False) + "\n" for f in faults)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
