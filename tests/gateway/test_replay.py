"""Replay of recorded files: the Azure telemetry slice, long and wide CSV, Parquet, loops and errors."""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironwatch.errors import ConfigError
from ironwatch.gateway import SAMPLE_SCHEMA, Source
from ironwatch.gateway.replay import TEMPLATE, Replay, from_config

AZURE = Path(__file__).resolve().parent.parent / "data" / "azure_telemetry_slice.csv"
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
AZURE_METRICS = {
    "volt": "voltage_v",
    "rotate": "rpm",
    "pressure": "pressure_psi",
    "vibration": "vibration_mm_s",
}


def azure(tmp_path: Path, **options: Any) -> Replay:
    shutil.copy(AZURE, tmp_path / "telemetry.csv")
    table = {
        "type": "replay",
        "path": "telemetry.csv",
        "ts_column": "datetime",
        "sensor_column": "machineID",
        "sensor_prefix": "machine-",
        "metrics": AZURE_METRICS,
        **options,
    }
    source = from_config(table, "sources[1]", tmp_path)
    source.open()
    return source


def _rows() -> list[dict[str, str]]:
    with AZURE.open() as f:
        return list(csv.DictReader(f))


def _ms(text: str) -> int:
    return round(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_azure_telemetry_replays_shifted_and_sped_up(tmp_path: Path) -> None:
    source = azure(tmp_path, start="2026-01-01T00:00:00Z", speed=3600.0)
    assert isinstance(source, Source)
    rows = _rows()
    first = min(_ms(r["datetime"]) for r in rows)
    # After 100 s of replay, every reading recorded in the first 100 hours of the file has come.
    due = [r for r in rows if (_ms(r["datetime"]) - first) / 3600 <= 100_000]
    table = source.read(START + 100_000)
    assert table.schema == SAMPLE_SCHEMA
    assert table.num_rows == 4 * len(due) > 0
    row = due[-1]
    at = START + (_ms(row["datetime"]) - first) // 3600
    mine = table.filter(
        pa.compute.and_(
            pa.compute.equal(table["sensor"], f"machine-{row['machineID']}"),
            pa.compute.equal(table["ts_ms"], at),
        )
    )
    values = dict(zip(mine["metric"].to_pylist(), mine["value"].to_pylist(), strict=True))
    assert values == {metric: float(row[column]) for column, metric in AZURE_METRICS.items()}
    assert source.read(START + 100_000).num_rows == 0  # nothing twice
    rest = source.read(START + 10**9)
    assert table.num_rows + rest.num_rows == 4 * len(rows)
    assert rest["ts_ms"].to_numpy().min() > START + 100_000
    rates = source.declared_rates()
    assert set(rates) == {f"machine-{r['machineID']}" for r in rows}
    assert all(rate > 0 for rate in rates.values())


def test_start_now_shifts_the_first_reading_to_the_moment_the_source_opens(tmp_path: Path) -> None:
    shutil.copy(AZURE, tmp_path / "telemetry.csv")
    table = {
        "path": "telemetry.csv",
        "ts_column": "datetime",
        "sensor_column": "machineID",
        "metrics": AZURE_METRICS,
    }
    source = from_config(table, "sources[0]", tmp_path, clock=lambda: START)
    source.open()
    first = source.read(START)
    assert set(first["ts_ms"].to_pylist()) == {START}
    assert set(first["sensor"].to_pylist()) == {"1"}
    # At speed 1 the next reading of the file (8 hours later) waits 8 hours.
    assert source.read(START + 3_600_000).num_rows == 0


def test_long_csv_with_epoch_ms_and_shift(tmp_path: Path) -> None:
    lines = ["ts,sensor,metric,value"]
    for i in range(100):
        lines.append(f"{1_000_000 + i * 1000},pump-{i % 3},pressure_bar,{i / 10}")
    lines.append("1000500,pump-0,flow_l_min,")  # an empty value is no reading
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    source = from_config({"type": "replay", "path": "long.csv", "shift_s": 10.0, "speed": 2.0}, "s", tmp_path)
    source.open()
    parts = [source.read(1_000_000 + 10_000 + i * 7_000) for i in range(10)]
    whole = pa.concat_tables(parts)
    assert whole.num_rows == 100
    ts = whole["ts_ms"].to_numpy()
    assert ts[0] == 1_010_000 and ts[-1] == 1_010_000 + 99 * 500
    assert np.array_equal(whole["value"].to_numpy(), np.arange(100) / 10)
    assert whole["sensor"].to_pylist()[:3] == ["pump-0", "pump-1", "pump-2"]
    assert set(whole["metric"].to_pylist()) == {"pressure_bar"}


def test_parquet_with_timestamps_and_loop(tmp_path: Path) -> None:
    times = pa.array(
        [dt.datetime(2025, 6, 1, 0, 0, s, tzinfo=dt.UTC) for s in (0, 10, 20)], pa.timestamp("us", tz="UTC")
    )
    table = pa.table({"time": times, "node": ["a", "b", "a"], "temp": [1.0, 2.0, 3.0], "rpm": [10, 20, 30]})
    pq.write_table(table, tmp_path / "rec.parquet")
    config = {
        "path": "rec.parquet",
        "ts_column": "time",
        "sensor_column": "node",
        "metrics": {"temp": "temperature_c", "rpm": "rpm"},
        "start": START,  # a TOML datetime arrives as datetime, an integer is rejected below
        "loop": True,
    }
    with pytest.raises(ConfigError) as raised:
        from_config(config, "sources[2]", tmp_path)
    assert raised.value.setting == "sources[2].start"
    config["start"] = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    source = from_config(config, "sources[2]", tmp_path)
    source.open()
    assert source.period_ms == 30_000  # 20 s of recording plus one 10 s step
    out = source.read(START + 65_000)  # laps at 0, 30 and 60 s
    ts = out["ts_ms"].to_numpy()
    assert out.num_rows == 6 * 2 + 2
    assert np.array_equal(np.unique(ts) - START, [0, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000])
    assert out.filter(pa.compute.equal(out["ts_ms"], START + 50_000))["value"].to_pylist() == [3.0, 30.0]


def test_template_is_valid_toml_with_every_option() -> None:
    entry = tomllib.loads(TEMPLATE)["sources"][0]
    assert entry["type"] == "replay" and entry["speed"] == 1.0 and entry["loop"] is False
    for option in ("shift_s", "metrics"):
        assert option in TEMPLATE


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"path": "missing.csv"}, "sources[1].path"),
        ({"ts_column": "when"}, "sources[1].ts_column"),
        ({"sensor_column": "machine"}, "sources[1].sensor_column"),
        ({"metrics": {"volts": "voltage_v"}}, "sources[1].metrics.volts"),
        ({"metrics": {"volt": "volt age"}}, "sources[1].metrics.volt"),
        ({"metric_column": "metric"}, "sources[1].metric_column"),
        ({"speed": 0}, "sources[1].speed"),
        ({"loop": "yes"}, "sources[1].loop"),
        ({"start": "2026-01-01T00:00:00Z", "shift_s": 5}, "sources[1].shift_s"),
        ({"sensor_prefix": "machine #"}, "sources[1].sensor_column"),
        ({"rate": 3}, "sources[1].rate"),
        ({"sensor_column": "volt", "ts_column": "rotate"}, "sources[1].ts_column"),
    ],
)
def test_bad_options_name_the_setting(options: dict[str, Any], setting: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        azure(tmp_path, **options)
    assert raised.value.setting == setting


def test_text_times_that_are_not_times_and_unknown_suffixes(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("ts,sensor,metric,value\nyesterday,a,b,1\n")
    with pytest.raises(ConfigError) as raised:
        from_config({"path": "bad.csv"}, "s", tmp_path)
    assert raised.value.setting == "s.ts_column"
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(ConfigError) as raised:
        from_config({"path": "data.json"}, "s", tmp_path)
    assert raised.value.setting == "s.path"
