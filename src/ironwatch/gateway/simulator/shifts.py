"""When the conveyor lines run, and how hard: the shift plan and the parcel load of the sort center.

Lines run Monday to Saturday in an early shift (05:30-13:45) and a late shift (14:15-22:00), each
with a half-hour break in the middle, and stop at night and on Sundays. Every third line also runs
a night shift for the inbound trucks (22:30-05:00, Sunday night to Saturday morning). Lines start a
minute or two apart, and on a line each machine starts a few seconds after the one downstream of
it. Times are UTC.

Everything is in closed form from absolute time: whether a machine runs, how long since it last
started and since it last stopped. That is what lets the temperature after a start be computed
without integrating anything, so a reading never depends on the readings before it.
"""

from __future__ import annotations

import numpy as np

from ironwatch.gateway.simulator.plant import Plant

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
# 1970-01-01 was a Thursday: adding three days makes seconds-of-week count from Monday 00:00.
_EPOCH_TO_MONDAY_S = 3 * DAY_S

_DAY_RUNS_H = ((5.5, 9.5), (10.0, 13.75), (14.25, 18.0), (18.5, 22.0))
_NIGHT_RUNS_H = ((22.5, 26.0), (26.5, 29.0))  # past 24 h: into the next morning
_WORKDAYS = range(6)  # Monday to Saturday
_NIGHTS = (6, 0, 1, 2, 3, 4)  # the night shift starts Sunday to Friday evening


def _week_events(has_night_shift: bool) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop times (seconds of week) of one line, sorted, with the week's wrap added."""
    runs = [(d * DAY_S + a * 3600, d * DAY_S + b * 3600) for d in _WORKDAYS for a, b in _DAY_RUNS_H]
    if has_night_shift:
        runs += [(d * DAY_S + a * 3600, d * DAY_S + b * 3600) for d in _NIGHTS for a, b in _NIGHT_RUNS_H]
    starts = np.sort(np.array([a for a, _ in runs]) % WEEK_S)
    stops = np.sort(np.array([b for _, b in runs]) % WEEK_S)
    # The last event of the previous week stands before the first of this one.
    return np.concatenate([[starts[-1] - WEEK_S], starts]), np.concatenate([[stops[-1] - WEEK_S], stops])


class Shifts:
    """The shift plan of every line of a plant, as padded arrays for vectorised look-ups."""

    def __init__(self, plant: Plant) -> None:
        self._plant = plant
        events = [_week_events(bool(night)) for night in plant.line_has_night_shift]
        width = max(len(starts) for starts, _ in events)
        # Padding with +inf keeps lines with fewer events out of the "latest event before" maximum.
        self._starts = np.full((len(events), width), np.inf)
        self._stops = np.full((len(events), width), np.inf)
        for i, (starts, stops) in enumerate(events):
            self._starts[i, : len(starts)] = starts
            self._stops[i, : len(stops)] = stops

    def state(self, machine: np.ndarray, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whether each machine runs at ``t_s``, seconds since its last start and since its last stop."""
        plant = self._plant
        line = plant.machine_line[machine]
        delay = plant.line_start_offset_s[line] + plant.machine_start_delay_s[machine]
        week = (t_s + _EPOCH_TO_MONDAY_S - delay) % WEEK_S
        last_start = _latest(self._starts[line], week)
        last_stop = _latest(self._stops[line], week)
        return last_start > last_stop, week - last_start, week - last_stop

    def load(self, machine: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Share of its rated load each machine carries at ``t_s`` if it runs (0.15 to 1).

        Parcels peak in the morning (the night's trucks unloaded) and in the evening (the day's
        collections); on top of that each line wanders with its own slow rhythm.
        """
        plant = self._plant
        line = plant.machine_line[machine]
        hour = (t_s % DAY_S) / 3600.0
        peaks = 0.22 * np.exp(-(((hour - 8.0) / 1.6) ** 2)) + 0.3 * np.exp(-(((hour - 19.5) / 1.4) ** 2))
        peaks += 0.18 * np.exp(-(((hour - 3.0) / 1.2) ** 2))
        phase = plant.line_wander_phase[line]
        wander = 0.08 * np.sin(2 * np.pi * t_s / plant.line_wander_period_s[line] + phase)
        wander += 0.05 * np.sin(2 * np.pi * t_s / 7100.0 + 2 * phase)
        level = plant.line_load_base[line] + peaks + wander + plant.machine_load_offset[machine]
        clipped: np.ndarray = np.clip(level, 0.15, 1.0)
        return clipped


def _latest(events: np.ndarray, week: np.ndarray) -> np.ndarray:
    """Per row, the latest event at or before ``week`` (rows of ``events`` are per sample)."""
    latest: np.ndarray = np.where(events <= week[:, None], events, -np.inf).max(axis=1)
    return latest
