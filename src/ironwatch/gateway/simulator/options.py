"""The simulator's options: defaults, the ``[[sources]]`` template, and validation of a TOML table."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ironwatch.errors import ConfigError
from ironwatch.gateway import checks
from ironwatch.gateway.simulator.faults import KINDS, Fault
from ironwatch.gateway.simulator.signals import MAX_SENSORS

TEMPLATE = """\
[[sources]]
type = "simulator"            # a synthetic sort center: conveyor lines, 17 metrics per sensor
sensors = 550                 # sensor nodes (5 per conveyor machine, 10 machines per line)
seed = 7                      # same seed and options: the same readings at the same times
rate_per_min = 30.0           # declared readings per minute of each sensor and metric
delivery = 0.5                # share of readings that actually arrive (per sensor from ~0 to ~1, in bursts)
speed = 1.0                   # simulated seconds per real second; never runs ahead of the clock
backfill_days = 0.0           # days of history produced quickly before the live readings
# backfill_rate_per_min = 2.0 # history at a lower rate than rate_per_min (default: the same rate)
# start = 2026-01-05T05:00:00Z  # simulated time at start-up (default: now)
faults = "default"            # "default" (drawn from the seed), "none", or a list of tables:
# faults = [
#  {kind = "bearing_wear", sensor = "s-0003", start = 2026-01-05T06:00:00Z, duration_h = 48, severity = 0.8},
# ]
ground_truth = "simulator-faults.jsonl"  # JSON lines of the injected faults, next to this file; "" for none
interval_s = 1.0              # how often the gateway reads the simulator
"""

_KNOWN = (
    "type",
    "sensors",
    "seed",
    "rate_per_min",
    "delivery",
    "speed",
    "backfill_days",
    "backfill_rate_per_min",
    "start",
    "faults",
    "ground_truth",
    "interval_s",
)
_FAULT_KEYS = ("kind", "sensor", "start", "duration_h", "severity")


@dataclasses.dataclass(frozen=True)
class Options:
    """Every option of the simulator, validated; see :data:`TEMPLATE` for what each one means."""

    sensors: int = 550
    seed: int = 7
    rate_per_min: float = 30.0
    delivery: float = 0.5
    speed: float = 1.0
    backfill_days: float = 0.0
    backfill_rate_per_min: float | None = None
    start_ms: int | None = None
    faults: str | tuple[Fault, ...] = "default"
    ground_truth: Path | None = None
    interval_s: float = 1.0

    @property
    def period_ms(self) -> int:
        """Milliseconds between two samples of one sensor."""
        return max(1, round(60_000 / self.rate_per_min))

    @property
    def history_period_ms(self) -> int:
        """Milliseconds between two samples of one sensor in ``history`` (backfill)."""
        rate = self.backfill_rate_per_min if self.backfill_rate_per_min is not None else self.rate_per_min
        return max(1, round(60_000 / rate))


def parse(table: Mapping[str, Any], where: str, base_dir: Path) -> Options:
    """Options from one ``[[sources]]`` table; raises :class:`ConfigError` naming the bad key."""
    for key in table:
        if key not in _KNOWN:
            raise ConfigError(
                f"{where}.{key}", f"unknown option of the simulator; known: {', '.join(_KNOWN)}"
            )
    if table.get("type", "simulator") != "simulator":
        raise ConfigError(f"{where}.type", "must be 'simulator' for this source")
    sensors = checks.number(table, "sensors", where, 550, low=1, high=MAX_SENSORS - 1, integer=True)
    ground_truth = table.get("ground_truth", "simulator-faults.jsonl")
    if not isinstance(ground_truth, str):
        raise ConfigError(f"{where}.ground_truth", "must be a path as a string ('' for none)")
    return Options(
        sensors=sensors,
        seed=checks.number(table, "seed", where, 7, low=0, high=2**62, integer=True),
        rate_per_min=checks.number(table, "rate_per_min", where, 30.0, low=0.1, high=600.0),
        delivery=checks.number(table, "delivery", where, 0.5, low=0.0, high=1.0),
        speed=checks.number(table, "speed", where, 1.0, low=0.001, high=1_000_000.0),
        backfill_days=checks.number(table, "backfill_days", where, 0.0, low=0.0, high=3650.0),
        backfill_rate_per_min=(
            checks.number(table, "backfill_rate_per_min", where, 30.0, low=0.1, high=600.0)
            if "backfill_rate_per_min" in table
            else None
        ),
        start_ms=time_ms(table["start"], f"{where}.start") if "start" in table else None,
        faults=_faults(table.get("faults", "default"), f"{where}.faults", sensors),
        ground_truth=(base_dir / ground_truth) if ground_truth else None,
        interval_s=checks.number(table, "interval_s", where, 1.0, low=0.01, high=3600.0),
    )


def time_ms(value: Any, setting: str) -> int:
    """Epoch milliseconds of an RFC 3339 time (a TOML datetime or a string; naive means UTC)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(setting, f"not an RFC 3339 time: {value!r}") from exc
    if not isinstance(value, dt.datetime):  # a TOML datetime arrives as one already
        raise ConfigError(setting, f"must be an RFC 3339 time such as 2026-01-05T06:00:00Z, not {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    ms: int = round(value.timestamp() * 1000)
    return ms


def _faults(value: Any, where: str, sensors: int) -> str | tuple[Fault, ...]:
    if value in ("default", "none"):
        return str(value)
    if not isinstance(value, list):
        raise ConfigError(where, "must be 'default', 'none' or a list of fault tables")
    faults = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(at, "must be a table {kind, sensor, start, duration_h, severity}")
        for key in item:
            if key not in _FAULT_KEYS:
                raise ConfigError(f"{at}.{key}", f"unknown fault option; known: {', '.join(_FAULT_KEYS)}")
        for key in ("kind", "sensor", "start", "duration_h"):
            if key not in item:
                raise ConfigError(f"{at}.{key}", "is required")
        if item["kind"] not in KINDS:
            raise ConfigError(f"{at}.kind", f"unknown fault kind {item['kind']!r}; known: {', '.join(KINDS)}")
        sensor = item["sensor"]
        number = sensor[2:] if isinstance(sensor, str) and sensor.startswith("s-") else ""
        if not number.isdigit() or sensor != f"s-{int(number):04d}" or not 1 <= int(number) <= sensors:
            raise ConfigError(
                f"{at}.sensor", f"no sensor {sensor!r}: the simulator has s-0001 to s-{sensors:04d}"
            )
        start = time_ms(item["start"], f"{at}.start")
        hours = checks.number(item, "duration_h", at, 1.0, low=0.001, high=24 * 3650)
        severity = checks.number(item, "severity", at, 0.8, low=0.0, high=1.0)
        faults.append(Fault(str(item["kind"]), sensor, start, start + round(hours * 3_600_000), severity))
    return tuple(faults)
