"""The simulated sort center: schema, rates, determinism, physics, faults and options.

Times are explicit (an injected clock and ``now_ms`` values), never slept for. The reference moment
is Monday 2026-01-05 06:00 UTC, half an hour into the early shift.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ironwatch.errors import ConfigError
from ironwatch.gateway import SAMPLE_SCHEMA, Historical, Source
from ironwatch.gateway.simulator import KINDS, METRICS, TEMPLATE, Options, Simulator, from_config
from ironwatch.gateway.simulator.faults import Fault

T0 = 1_767_592_800_000  # Monday 2026-01-05 06:00:00 UTC
MIN = 60_000
HOUR = 3_600_000
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def sim(**options: Any) -> Simulator:
    """An opened simulator whose clock stands at T0 and whose simulated time starts there."""
    options.setdefault("start_ms", T0)
    source = Simulator(Options(**options), clock=lambda: T0)
    source.open()
    return source


def series(table: pa.Table, sensor: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Times and values of one sensor and metric."""
    mask = pc.and_(pc.equal(table["sensor"], sensor), pc.equal(table["metric"], metric))
    picked = table.filter(mask)
    return picked["ts_ms"].to_numpy(), picked["value"].to_numpy()


def test_readings_have_the_sample_schema_valid_ids_and_all_17_metrics() -> None:
    source = sim(faults="none")
    assert isinstance(source, Source)
    historical: Historical = source  # the backfill contract, checked by mypy
    assert callable(historical.history)
    table = source.read(T0 + 10_000)
    assert table.schema == SAMPLE_SCHEMA
    sensors = set(table["sensor"].to_pylist())
    assert all(ID.match(s) for s in sensors)
    assert sensors <= set(source.declared_rates())
    assert len(source.declared_rates()) == 550
    assert set(source.declared_rates().values()) == {30.0}
    assert set(table["metric"].to_pylist()) == set(METRICS) and len(METRICS) == 17
    assert np.isfinite(table["value"].to_numpy()).all()
    ts = table["ts_ms"].to_numpy()
    assert ts.min() >= T0 and ts.max() <= T0 + 10_000 and (np.diff(ts) >= 0).all()
    spots = source.plant.spots()
    assert spots[0].sensor == "s-0001" and spots[0].component == "motor" and spots[0].line == "line-01"
    assert spots[4].component == "roller" and spots[5].machine == "m-002"


def test_delivered_rate_is_about_half_the_declared_with_some_sensors_better_and_some_worse() -> None:
    source = sim(sensors=100, faults="none")
    table = source.readings(T0, T0 + HOUR)
    per_sensor = pc.value_counts(table["sensor"]).field("counts").to_numpy()
    rate = per_sensor / len(METRICS) / 60.0  # readings per metric per minute
    assert 0.4 * 30 <= rate.mean() <= 0.6 * 30
    assert rate.max() > 0.85 * 30 and np.percentile(rate, 10) < 0.3 * 30
    full = sim(sensors=10, faults="none", delivery=1.0).readings(T0, T0 + 10 * MIN)
    assert full.num_rows == 10 * 17 * 30 * 10


def test_readings_are_the_same_in_one_history_in_many_reads_and_after_a_restart() -> None:
    options: dict[str, Any] = {"sensors": 20, "seed": 3, "faults": "default"}
    whole = pa.concat_tables(sim(**options).history(T0, T0 + 10 * MIN, 600))
    reader = sim(**options)
    rng = np.random.default_rng(1)
    now, parts = T0, []
    while now < T0 + 10 * MIN - 1:
        now = min(now + int(rng.integers(1, 20_000)), T0 + 10 * MIN - 1)
        parts.append(reader.read(now))
    restarted = pa.concat_tables(sim(**options).history(T0, T0 + 10 * MIN, 37.5))
    assert whole.num_rows > 0
    assert pa.concat_tables(parts).equals(whole)
    assert restarted.equals(whole)
    other_seed = pa.concat_tables(sim(**{**options, "seed": 4}).history(T0, T0 + 10 * MIN, 600))
    assert not other_seed.equals(whole)


def test_read_goes_on_after_history_without_overlap_or_gap() -> None:
    source = sim(sensors=20)
    backfill = pa.concat_tables(source.history(T0 - 30 * MIN, T0, 120))
    live = source.read(T0 + MIN)
    assert backfill["ts_ms"].to_numpy().max() < T0 <= live["ts_ms"].to_numpy().min()
    expected = sim(sensors=20).readings(T0 - 30 * MIN, T0 + MIN + 1)
    assert pa.concat_tables([backfill, live]).equals(expected)
    assert sim(sensors=20, backfill_days=2.0).backfill_span() == (T0 - 2 * 24 * HOUR, T0)


def test_history_at_a_lower_backfill_rate_and_live_reads_at_the_declared_one(tmp_path: Path) -> None:
    options: dict[str, Any] = {"sensors": 20, "delivery": 1.0, "backfill_rate_per_min": 2.0}
    source = sim(**options)
    backfill = pa.concat_tables(source.history(T0 - 30 * MIN, T0, 120))
    live = source.read(T0 + MIN)
    assert backfill.num_rows == 20 * len(METRICS) * 2 * 30  # one sample per 30 s of every sensor
    times, _ = series(backfill, "s-0001", "rpm")
    assert set(np.diff(times)) == {30_000}
    assert backfill["ts_ms"].to_numpy().max() < T0 <= live["ts_ms"].to_numpy().min()
    assert live.equals(sim(sensors=20, delivery=1.0).read(T0 + MIN))  # live reads keep their rate
    again = pa.concat_tables(sim(**options).history(T0 - 30 * MIN, T0, 7))
    assert again.equals(backfill)
    parsed = from_config({"type": "simulator", "backfill_rate_per_min": 2}, "sources[0]", tmp_path)
    assert parsed.options.history_period_ms == 30_000 and parsed.options.period_ms == 2_000


def test_a_motor_warms_up_over_minutes_after_the_morning_start() -> None:
    source = sim(sensors=5, faults="none", delivery=1.0)
    start = T0 - 30 * MIN + int(source.plant.line_start_offset_s[0] * 1000)  # 05:30 plus the line's offset
    table = source.readings(start - 5 * MIN, start + 60 * MIN)
    ts, temp = series(table, "s-0001", "temperature_c")
    _, ambient = series(table, "s-0001", "ambient_temperature_c")
    _, rpm = series(table, "s-0001", "rpm")
    rise = temp - ambient
    at = lambda minutes: float(np.median(rise[np.abs(ts - (start + minutes * MIN)) < 20_000]))  # noqa: E731
    assert rpm[ts < start].max() == 0 and rpm[ts > start + MIN].min() > 1400
    assert at(-2) < 1.0  # cold after the night
    assert at(1) < 0.5 * at(45)
    assert at(2) < at(4) < at(8)
    assert at(15) > 0.85 * at(45)


def test_stopped_machines_look_stopped() -> None:
    sunday_noon = T0 - 18 * HOUR  # Sunday 2026-01-04 12:00 UTC: no line runs
    table = sim(sensors=55, faults="none").readings(sunday_noon, sunday_noon + 5 * MIN)
    value = {m: table.filter(pc.equal(table["metric"], m))["value"].to_numpy() for m in METRICS}
    for metric in ("rpm", "belt_speed_m_s", "current_a", "power_kw"):
        assert value[metric].max() == 0.0, metric
    assert value["vibration_rms_x_mm_s"].max() < 0.3
    assert np.abs(value["temperature_c"] - value["ambient_temperature_c"]).max() < 1.0


def _fault_run(
    kind: str, sensor: str = "s-0003", *, extra: tuple[Fault, ...] = ()
) -> tuple[pa.Table, pa.Table]:
    """Readings of 06:00-09:00 on Monday with one fault from 06:00, and of its healthy twin."""
    fault = Fault(kind, sensor, T0, T0 + 3 * HOUR, 1.0)
    faulty = sim(sensors=10, delivery=1.0, faults=(fault, *extra)).readings(T0, T0 + 3 * HOUR)
    twin_faults = extra if extra else "none"
    healthy = sim(sensors=10, delivery=1.0, faults=twin_faults).readings(T0, T0 + 3 * HOUR)
    return faulty, healthy


def _last_hour(table: pa.Table, sensor: str, metric: str) -> np.ndarray:
    ts, values = series(table, sensor, metric)
    return values[ts >= T0 + 2 * HOUR]


@pytest.mark.parametrize("kind", [k for k in KINDS if KINDS[k].metrics != ("*",)])
def test_each_fault_kind_changes_the_metrics_it_claims(kind: str) -> None:
    sensor = "s-0005" if kind == "belt_slip" else "s-0003"
    faulty, healthy = _fault_run(kind, sensor)
    for metric in KINDS[kind].metrics:
        bad, good = _last_hour(faulty, sensor, metric), _last_hour(healthy, sensor, metric)
        assert len(bad) == len(good) > 1000
        assert not np.array_equal(bad, good), f"{kind} leaves {metric} as it was"
    untouched = [m for m in METRICS if m not in KINDS[kind].metrics and m != "power_kw"]
    for metric in untouched:
        other = np.abs(_last_hour(faulty, sensor, metric) - _last_hour(healthy, sensor, metric)).max()
        assert other == 0.0, f"{kind} changes {metric}, which it does not claim"


def _mean(table: pa.Table, metric: str, sensor: str = "s-0003") -> float:
    return float(_last_hour(table, sensor, metric).mean())


def test_machine_faults_move_their_metrics_the_right_way() -> None:
    worn, healthy = _fault_run("bearing_wear")
    for metric, factor in (("vibration_rms_x_mm_s", 2.0), ("kurtosis_x", 1.4), ("ultrasound_db", 1.2)):
        assert _mean(worn, metric) > factor * _mean(healthy, metric), metric
    assert _mean(worn, "temperature_c") > _mean(healthy, "temperature_c") + 3
    # Its neighbour on the same machine feels some of it, a sensor on another machine nothing.
    assert _mean(worn, "vibration_rms_x_mm_s", "s-0004") > 1.3 * _mean(
        healthy, "vibration_rms_x_mm_s", "s-0004"
    )
    assert _mean(worn, "vibration_rms_x_mm_s", "s-0008") == _mean(healthy, "vibration_rms_x_mm_s", "s-0008")

    misaligned, healthy = _fault_run("misalignment")
    assert _mean(misaligned, "vibration_rms_y_mm_s") > 2.5 * _mean(healthy, "vibration_rms_y_mm_s")
    assert _mean(misaligned, "vibration_rms_y_mm_s") / _mean(healthy, "vibration_rms_y_mm_s") > _mean(
        misaligned, "vibration_rms_x_mm_s"
    ) / _mean(healthy, "vibration_rms_x_mm_s")

    hot, healthy = _fault_run("overheating")
    assert _mean(hot, "temperature_c") > _mean(healthy, "temperature_c") + 15

    slipping, healthy = _fault_run("belt_slip", "s-0005")
    ratio = lambda t: _mean(t, "belt_speed_m_s", "s-0005") / _mean(t, "rpm", "s-0005")  # noqa: E731
    assert ratio(slipping) < 0.95 * ratio(healthy)
    # Stick-slip makes the current jump from one reading to the next (load alone moves it slowly).
    assert np.std(np.diff(_last_hour(slipping, "s-0005", "current_a"))) > 2 * np.std(
        _last_hour(healthy, "s-0005", "current_a")
    )


def test_sensor_faults_stuck_dropout_drift_spike() -> None:
    stuck, healthy = _fault_run("stuck")
    for metric in METRICS:
        assert len(np.unique(_last_hour(stuck, "s-0003", metric))) == 1, metric
        assert len(np.unique(_last_hour(healthy, "s-0003", metric))) > 1 or metric in ("kurtosis_x",)

    dropped, healthy = _fault_run("dropout")
    assert len(series(dropped, "s-0003", "rpm")[0]) == 0 and len(series(healthy, "s-0003", "rpm")[0]) > 1000
    assert dropped.num_rows == healthy.num_rows - len(series(healthy, "s-0003", "rpm")[0]) * 17

    drifting, healthy = _fault_run("drift")
    ts, bad = series(drifting, "s-0003", "temperature_c")
    offset = bad - series(healthy, "s-0003", "temperature_c")[1]
    assert offset[ts < T0 + 10 * MIN].mean() < 1.0 and offset[ts > T0 + 170 * MIN].mean() > 10.0

    spiking, healthy = _fault_run("spike")
    vib_bad, vib_good = (_last_hour(t, "s-0003", "vibration_rms_x_mm_s") for t in (spiking, healthy))
    assert vib_bad.max() > 3 * vib_good.max()
    assert 0.02 < np.mean(vib_bad != vib_good) < 0.12


def test_a_misplaced_sensor_reads_the_fan_and_misses_the_bearing_fault() -> None:
    wear = Fault("bearing_wear", "s-0003", T0, T0 + 3 * HOUR, 1.0)
    on_fan, fan_only = _fault_run("misplaced", extra=(wear,))
    assert _mean(on_fan, "temperature_c") < _mean(on_fan, "ambient_temperature_c") + 3
    assert _mean(fan_only, "temperature_c") > _mean(fan_only, "ambient_temperature_c") + 10
    for metric in ("vibration_rms_x_mm_s", "kurtosis_x", "ultrasound_db", "temperature_c"):
        # With the wear or without it, the node on the fan reads the same.
        misplaced_alone = sim(
            sensors=10, delivery=1.0, faults=(Fault("misplaced", "s-0003", T0, T0 + 3 * HOUR, 1.0),)
        ).readings(T0 + 2 * HOUR, T0 + 3 * HOUR)
        assert np.array_equal(
            _last_hour(on_fan, "s-0003", metric), series(misplaced_alone, "s-0003", metric)[1]
        )
    # The other sensors of the machine still feel the wear.
    assert _mean(on_fan, "vibration_rms_x_mm_s", "s-0004") > 1.3 * _mean(
        sim(sensors=10, delivery=1.0, faults="none").readings(T0, T0 + 3 * HOUR),
        "vibration_rms_x_mm_s",
        "s-0004",
    )


def test_ground_truth_log_lists_every_fault_and_is_rewritten_identically(tmp_path: Path) -> None:
    config = {
        "type": "simulator",
        "sensors": 20,
        "start": "2026-01-05T06:00:00Z",
        "faults": [
            {"kind": "bearing_wear", "sensor": "s-0003", "start": "2026-01-05T06:00:00Z", "duration_h": 48.0}
        ],
    }
    source = from_config(config, "sources[0]", tmp_path)
    source.open()
    log = tmp_path / "simulator-faults.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == [
        {
            "kind": "bearing_wear",
            "sensor": "s-0003",
            "machine": "m-001",
            "line": "line-01",
            "component": "bearing_de",
            "scope": "machine",
            "start": "2026-01-05T06:00:00Z",
            "end": "2026-01-07T06:00:00Z",
            "severity": 0.8,
            "metrics": list(KINDS["bearing_wear"].metrics),
            "description": lines[0]["description"],
        }
    ]
    assert "m-001" in lines[0]["description"]

    default = {"type": "simulator", "start": "2026-01-05T06:00:00Z", "ground_truth": "truth/faults.jsonl"}
    from_config(default, "sources[0]", tmp_path).open()
    first = (tmp_path / "truth" / "faults.jsonl").read_bytes()
    from_config(default, "sources[0]", tmp_path).open()  # a restart
    assert (tmp_path / "truth" / "faults.jsonl").read_bytes() == first
    faults = [json.loads(line) for line in first.decode().splitlines()]
    assert {f["kind"] for f in faults} == set(KINDS)
    now = "2026-01-05T06:00:00Z"
    active = [f for f in faults if f["start"] <= now < f["end"]]
    recent = [f for f in faults if "2026-01-02" <= f["end"] <= now]
    assert len(active) >= 2 and len(recent) >= 2
    assert any(f["kind"] == "bearing_wear" for f in active)


def test_speed_runs_faster_but_never_past_the_clock() -> None:
    source = Simulator(Options(sensors=10, start_ms=T0 - 10 * MIN, speed=100.0), clock=lambda: T0)
    source.open()
    first = source.read(T0 + 1_000)  # 100 simulated seconds passed
    ts = first["ts_ms"].to_numpy()
    assert ts.min() >= T0 - 10 * MIN and ts.max() <= T0 - 10 * MIN + 100_000
    caught_up = source.read(T0 + 10_000)  # 1000 simulated seconds would be in the future
    assert caught_up["ts_ms"].to_numpy().max() <= T0 + 10_000
    assert source.sim_now(T0 + 10_000) == T0 + 10_000
    future = Simulator(Options(sensors=10, start_ms=T0 + HOUR), clock=lambda: T0)
    future.open()
    assert future.read(T0 + 5_000).num_rows == 0


def test_template_parses_and_builds_the_default_simulator(tmp_path: Path) -> None:
    table = tomllib.loads(TEMPLATE)["sources"][0]
    source = from_config(table, "sources[0]", tmp_path)
    assert source.options.sensors == 550 and source.options.rate_per_min == 30.0
    assert source.options.ground_truth == tmp_path / "simulator-faults.jsonl"
    source.check()
    parsed = tomllib.loads(
        TEMPLATE.replace("# start = 2026", "start = 2026").replace('faults = "default"', 'faults = "none"')
    )
    assert from_config(parsed["sources"][0], "sources[0]", tmp_path).options.start_ms == T0 - HOUR


@pytest.mark.parametrize(
    ("table", "setting"),
    [
        ({"sensor": 5}, "sources[0].sensor"),
        ({"sensors": 0}, "sources[0].sensors"),
        ({"sensors": "many"}, "sources[0].sensors"),
        ({"sensors": 5.5}, "sources[0].sensors"),
        ({"delivery": 1.5}, "sources[0].delivery"),
        ({"speed": True}, "sources[0].speed"),
        ({"start": "yesterday"}, "sources[0].start"),
        ({"faults": "some"}, "sources[0].faults"),
        (
            {
                "faults": [
                    {"kind": "rust", "sensor": "s-0001", "start": "2026-01-05T06:00:00Z", "duration_h": 1}
                ]
            },
            "sources[0].faults[0].kind",
        ),
        (
            {
                "faults": [
                    {"kind": "stuck", "sensor": "s-9999", "start": "2026-01-05T06:00:00Z", "duration_h": 1}
                ]
            },
            "sources[0].faults[0].sensor",
        ),
        ({"faults": [{"kind": "stuck", "sensor": "s-0001", "duration_h": 1}]}, "sources[0].faults[0].start"),
        (
            {
                "faults": [
                    {
                        "kind": "stuck",
                        "sensor": "s-0001",
                        "start": "2026-01-05T06:00:00Z",
                        "duration_h": 1,
                        "colour": "red",
                    }
                ]
            },
            "sources[0].faults[0].colour",
        ),
        ({"type": "replay"}, "sources[0].type"),
        ({"ground_truth": 3}, "sources[0].ground_truth"),
        ({"backfill_rate_per_min": 0}, "sources[0].backfill_rate_per_min"),
    ],
)
def test_bad_options_name_the_setting(table: dict[str, Any], setting: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        from_config({"type": "simulator", **table}, "sources[0]", tmp_path)
    assert raised.value.setting == setting


def test_cost_of_live_reads_and_speed_of_history() -> None:
    """Not a timed assertion: prints what a 550-sensor site costs, for the record."""
    source = sim()
    cpu = time.process_time()
    rows = sum(source.read(T0 + i * 1_000).num_rows for i in range(1, 31))
    share = (time.process_time() - cpu) / 30
    wall = time.perf_counter()
    produced = sum(t.num_rows for t in source.history(T0 + 30_000, T0 + 30_000 + 20 * MIN, 300))
    rate = produced / (time.perf_counter() - wall)
    print(
        f"\nlive read: {rows / 30:.0f} readings/s at {share:.2%} of a core;"
        f" history: {rate / 1e6:.1f}M readings/s"
    )
    assert rows > 0 and produced > 0
