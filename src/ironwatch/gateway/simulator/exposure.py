"""How much of each fault every sample sees: the faults of a plan turned into per-sample arrays.

The physics in :mod:`.signals` takes these arrays as inputs (a wear level, a misalignment level, a
misplaced flag), so each fault's effect is written once, where the physics of its metric is, and a
sample with no fault costs nothing extra. The loop here runs over the few faults of a time span,
never over readings.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ironwatch.gateway.simulator.faults import Fault
from ironwatch.gateway.simulator.plant import Plant

#: Share of a machine fault that the machine's other sensors see (through the frame and the belt).
NEIGHBOUR_WEIGHT = 0.35
#: Time constant of an overheating fault's climb, and the ramp-in of a misalignment (s).
_OVERHEAT_TAU_S = 1800.0
_MISALIGN_RAMP_S = 3600.0


@dataclasses.dataclass
class Exposure:
    """Per-sample fault levels for samples ``(t_ms, sensor)``; all zero (or False) when healthy."""

    wear: np.ndarray  # bearing wear, late-growing part (vibration, crest, temperature)
    wear_early: np.ndarray  # bearing wear, early part (ultrasound, kurtosis)
    misalignment: np.ndarray
    overheating: np.ndarray
    slip: np.ndarray
    drift: np.ndarray
    spike: np.ndarray
    misplaced: np.ndarray  # bool

    @classmethod
    def healthy(cls, count: int) -> Exposure:
        """No fault at all, for ``count`` samples."""
        z = np.zeros
        return cls(z(count), z(count), z(count), z(count), z(count), z(count), z(count), z(count, dtype=bool))


def _progress(fault: Fault, t_ms: np.ndarray) -> np.ndarray:
    """How far through its span the fault is at each time (0 to 1)."""
    return np.clip((t_ms - fault.start_ms) / max(1, fault.end_ms - fault.start_ms), 0.0, 1.0)


def _members(plant: Plant, fault: Fault, sensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which samples sit on the fault's machine, and each one's weight (1 on the named sensor)."""
    index = plant.sensor_index(fault.sensor)
    on_machine = plant.sensor_machine[sensor] == plant.sensor_machine[index]
    weight = np.where(sensor == index, 1.0, NEIGHBOUR_WEIGHT) * on_machine
    return on_machine, weight


def expose(plant: Plant, faults: list[Fault], t_ms: np.ndarray, sensor: np.ndarray) -> Exposure:
    """Fault levels of each sample (``t_ms`` and ``sensor`` index arrays of equal length)."""
    out = Exposure.healthy(len(t_ms))
    if not faults:
        return out
    # Misplaced first: a sensor on the fan cowl does not feel what the machine's faults do.
    for fault in faults:
        if fault.kind == "misplaced":
            out.misplaced |= (sensor == plant.sensor_index(fault.sensor)) & _active(fault, t_ms)
    feels = ~out.misplaced
    for fault in faults:
        kind, sev = fault.kind, fault.severity
        if kind == "misplaced":
            continue
        active = _active(fault, t_ms)
        if kind in ("stuck", "dropout"):
            continue  # handled on the sample grid, before any physics
        if kind in ("drift", "spike"):
            mine = active & (sensor == plant.sensor_index(fault.sensor))
            if kind == "drift":
                out.drift += np.where(mine, sev * _progress(fault, t_ms), 0.0)
            else:
                out.spike = np.maximum(out.spike, np.where(mine, sev, 0.0))
            continue
        on_machine, weight = _members(plant, fault, sensor)
        if kind == "belt_slip":
            # The belt slips for the whole machine; speed and current come from its drive.
            out.slip += np.where(active & on_machine, sev, 0.0)
            continue
        level = np.where(active & feels, weight * sev, 0.0)
        if kind == "bearing_wear":
            p = _progress(fault, t_ms)
            out.wear += level * p**3
            out.wear_early += level * p**1.5
        elif kind == "misalignment":
            out.misalignment += level * np.clip((t_ms - fault.start_ms) / (_MISALIGN_RAMP_S * 1000), 0, 1)
        elif kind == "overheating":
            heat = np.where(sensor == plant.sensor_index(fault.sensor), 1.0, 0.25)
            climb = 1.0 - np.exp(-np.maximum(t_ms - fault.start_ms, 0) / (_OVERHEAT_TAU_S * 1000))
            out.overheating += np.where(active & feels, heat * sev * climb, 0.0) * (weight > 0)
    return out


def _active(fault: Fault, t_ms: np.ndarray) -> np.ndarray:
    return (t_ms >= fault.start_ms) & (t_ms < fault.end_ms)


def sensor_mask(
    plant: Plant, faults: list[Fault], kind: str, t_ms: np.ndarray, sensor: np.ndarray
) -> np.ndarray:
    """Samples inside a fault of ``kind`` (``stuck`` or ``dropout``) on their own sensor."""
    mask = np.zeros(len(t_ms), dtype=bool)
    for fault in faults:
        if fault.kind == kind:
            mask |= (sensor == plant.sensor_index(fault.sensor)) & _active(fault, t_ms)
    return mask


def frozen_time(
    plant: Plant, faults: list[Fault], period_ms: int, t_ms: np.ndarray, sensor: np.ndarray
) -> np.ndarray:
    """Each sample's time, or, inside a ``stuck`` fault, the sensor's last sample time before it."""
    out = t_ms.copy()
    phase_ms = plant.phase_ms(period_ms)
    for fault in faults:
        if fault.kind != "stuck":
            continue
        index = plant.sensor_index(fault.sensor)
        mine = (sensor == index) & _active(fault, t_ms)
        last = (fault.start_ms - phase_ms[index]) // period_ms * period_ms + phase_ms[index]
        out[mine] = last
    return out
