"""Replay of a recorded CSV or Parquet file as a gateway source, shifted in time and sped up.

The file is read once with pyarrow, turned into long columns (time, sensor, metric, value) and
sorted by time. A reading recorded at file time ``f`` is replayed with the time
``start + (f - first) / speed``, where ``first`` is the file's earliest time and ``start`` is the
moment the source opens (``start = "now"``), a given RFC 3339 time, or ``first + shift_s``. ``read``
returns the readings whose replayed time has come, found with a binary search over the sorted file
times, so it costs the same whatever the file's size. With ``loop = true`` the file starts again
one recording step after its last reading.

Both layouts of a recording work: long (one row per reading: ``sensor_column``, ``metric_column``,
``value_column``) and wide (one row per sensor and time, a column per metric, named by ``metrics``),
such as the Azure predictive-maintenance telemetry (``datetime,machineID,volt,rotate,...``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironwatch.errors import ConfigError
from ironwatch.gateway import checks
from ironwatch.gateway.simulator.options import time_ms
from ironwatch.gateway.source import SAMPLE_SCHEMA, empty_sample

TEMPLATE = """\
[[sources]]
type = "replay"               # replay a recorded CSV or Parquet file, shifted to now
path = "telemetry.csv"        # .csv or .parquet, relative to this file
ts_column = "ts"              # epoch milliseconds, or timestamps (naive ones are UTC)
sensor_column = "sensor"
# Long files (one reading per row):
metric_column = "metric"
value_column = "value"
# Wide files (a column per metric) instead name their value columns and the metric each holds:
# metrics = {volt = "voltage_v", rotate = "rpm", pressure = "pressure_psi", vibration = "vibration_mm_s"}
sensor_prefix = ""            # put before every sensor id ("machine-": machineID 1 becomes machine-1)
start = "now"                 # replayed time of the first reading: "now" (when the source opens) or RFC 3339
# shift_s = 0.0               # or: shift every reading by this many seconds (instead of start)
speed = 1.0                   # file seconds per real second (3600: an hour of file per second)
loop = false                  # start again after the last reading
interval_s = 1.0              # how often the gateway reads the replay
"""

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Most readings one ``read`` returns; a replay that fell far behind catches up over reads.
MAX_READ_ROWS = 2_000_000
_KNOWN = (
    "type",
    "path",
    "ts_column",
    "sensor_column",
    "metric_column",
    "value_column",
    "metrics",
    "sensor_prefix",
    "start",
    "shift_s",
    "speed",
    "loop",
    "interval_s",
)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Replay:
    """A recorded file replayed as live readings; see the module docstring for the time mapping."""

    def __init__(
        self,
        path: Path,
        columns: tuple[pa.Array, pa.Array, pa.Array, pa.Array],
        *,
        start_ms: int | None = None,
        shift_s: float | None = None,
        speed: float = 1.0,
        loop: bool = False,
        interval_s: float = 1.0,
        clock: Callable[[], int] | None = None,
        where: str = "replay",
    ) -> None:
        ts, sensor, metric, value = columns
        self.name = f"replay {path.name}"
        self.path = path
        self.interval_s = interval_s
        self.speed = speed
        self.loop = loop
        self.where = where
        order = np.argsort(np.asarray(ts), kind="stable")
        take = pa.array(order)
        ts_ms = np.asarray(ts)[order]
        self._sensor = sensor.take(take)
        self._metric = metric.take(take)
        self._value = np.asarray(value.cast(pa.float64()))[order]
        self.first_ms = int(ts_ms[0]) if len(ts_ms) else 0
        self._rel_ms = ts_ms - self.first_ms
        # One loop lasts the recording plus one step, so the next loop's first reading follows in rhythm.
        steps = np.diff(np.unique(ts_ms))
        self.step_ms = int(np.median(steps)) if len(steps) else 1000
        self.period_ms = int(self._rel_ms[-1]) + self.step_ms if len(ts_ms) else self.step_ms
        self._start_ms = start_ms
        self._shift_ms = None if shift_s is None else round(shift_s * 1000)
        self._clock = clock or _wall_ms
        self._anchor_ms: int | None = None
        self._lap = 0
        self._position = 0

    @property
    def rows(self) -> int:
        """Readings in one pass through the file."""
        return len(self._rel_ms)

    def open(self) -> None:
        """Fix when the first reading is replayed (for ``start = "now"``: this moment)."""
        if self._anchor_ms is not None:
            return
        if self._start_ms is not None:
            self._anchor_ms = self._start_ms
        elif self._shift_ms is not None:
            self._anchor_ms = self.first_ms + self._shift_ms
        else:
            self._anchor_ms = self._clock()

    def replayed_ms(self, file_ms: np.ndarray, lap: int = 0) -> np.ndarray:
        """The replayed times of file times ``file_ms`` in loop ``lap`` (after ``open``)."""
        anchor = self._anchor_ms if self._anchor_ms is not None else 0
        rel = file_ms - self.first_ms + lap * self.period_ms
        out: np.ndarray = anchor + np.floor(rel / self.speed).astype(np.int64)
        return out

    def read(self, now_ms: int) -> pa.Table:
        """The readings whose replayed time is at most ``now_ms`` and that were not returned yet."""
        if self._anchor_ms is None:
            self.open()
        assert self._anchor_ms is not None
        pieces: list[pa.Table] = []
        budget = MAX_READ_ROWS
        while budget > 0 and self.rows:
            # rel/speed < now - anchor + 1  <=>  floor(rel/speed) <= now - anchor
            limit = (now_ms - self._anchor_ms + 1) * self.speed - self._lap * self.period_ms
            end = min(int(np.searchsorted(self._rel_ms, limit, side="left")), self._position + budget)
            if end > self._position:
                pieces.append(self._slice(self._position, end))
                budget -= end - self._position
                self._position = end
            if self._position < self.rows or not self.loop:
                break
            self._lap += 1
            self._position = 0
        if not pieces:
            return empty_sample()
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]

    def _slice(self, a: int, b: int) -> pa.Table:
        ts = self.replayed_ms(self._rel_ms[a:b] + self.first_ms, self._lap)
        return pa.Table.from_arrays(
            [
                pa.array(ts),
                self._sensor.slice(a, b - a),
                self._metric.slice(a, b - a),
                pa.array(self._value[a:b]),
            ],
            schema=SAMPLE_SCHEMA,
        )

    def declared_rates(self) -> dict[str, float]:
        """Each sensor with its readings per minute per metric, as replayed (file rate times speed)."""
        pairs = pc.binary_join_element_wise(self._sensor, self._metric, "\x00")
        per_sensor: dict[str, int] = {}
        metrics: dict[str, int] = {}
        for entry in pc.value_counts(pairs).to_pylist():
            sensor = entry["values"].split("\x00", 1)[0]
            per_sensor[sensor] = per_sensor.get(sensor, 0) + entry["counts"]
            metrics[sensor] = metrics.get(sensor, 0) + 1
        minutes = self.period_ms / 60_000 / self.speed
        return {s: per_sensor[s] / metrics[s] / minutes for s in sorted(per_sensor)}

    def check(self) -> None:
        """The file must still be there and readable."""
        if not self.path.is_file():
            raise ConfigError(f"{self.where}.path", f"no file {self.path}")

    def close(self) -> None:
        """Nothing to release; safe to call twice."""


def from_config(
    table: Mapping[str, Any], where: str, base_dir: Path, *, clock: Callable[[], int] | None = None
) -> Replay:
    """A replay from one ``[[sources]]`` table of the gateway config (see :data:`TEMPLATE`)."""
    for key in table:
        if key not in _KNOWN:
            raise ConfigError(f"{where}.{key}", f"unknown option of the replay; known: {', '.join(_KNOWN)}")
    if table.get("type", "replay") != "replay":
        raise ConfigError(f"{where}.type", "must be 'replay' for this source")
    if "path" not in table or not isinstance(table["path"], str) or not table["path"]:
        raise ConfigError(f"{where}.path", "is required: the CSV or Parquet file to replay")
    path = base_dir / table["path"]
    if not path.is_file():
        raise ConfigError(f"{where}.path", f"no file {path}")
    names = {
        k: checks.text(table, k, where, d) for k, d in (("ts_column", "ts"), ("sensor_column", "sensor"))
    }
    prefix = checks.text(table, "sensor_prefix", where, "", empty=True)
    wide = table.get("metrics")
    if wide is not None:
        for key in ("metric_column", "value_column"):
            if key in table:
                raise ConfigError(f"{where}.{key}", "a wide file (with metrics = {...}) has no such column")
        if not isinstance(wide, Mapping) or not wide:
            raise ConfigError(f"{where}.metrics", 'must be a table {column = "metric_name", ...}')
        for column, name in wide.items():
            if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
                raise ConfigError(f"{where}.metrics.{column}", f"{name!r} is not a valid metric name")
    else:
        names["metric_column"] = checks.text(table, "metric_column", where, "metric")
        names["value_column"] = checks.text(table, "value_column", where, "value")
    needed = [*names.values(), *(wide or {})]
    data = _load(path, needed, f"{where}.path")
    for key, column in [*names.items(), *((f"metrics.{c}", c) for c in wide or {})]:
        if column not in data.column_names:
            raise ConfigError(f"{where}.{key}", f"{path.name} has no column {column!r}")
    ts = _epoch_ms(data[names["ts_column"]], f"{where}.ts_column")
    sensor = _ids(data[names["sensor_column"]], prefix, f"{where}.sensor_column")
    metric: pa.Array
    if wide is not None:
        n = data.num_rows
        ts = np.tile(ts, len(wide))
        sensor = pa.concat_arrays([sensor] * len(wide))
        metric = pa.concat_arrays([pa.repeat(pa.scalar(m, pa.string()), n) for m in wide.values()])
        value = pa.concat_arrays([_values(data[c], f"{where}.metrics.{c}") for c in wide])
    else:
        metric = _ids(data[names["metric_column"]], "", f"{where}.metric_column")
        value = _values(data[names["value_column"]], f"{where}.value_column")
    keep = pc.is_valid(value)  # an empty cell is no reading
    columns = (pa.array(ts).filter(keep), sensor.filter(keep), metric.filter(keep), value.filter(keep))
    start_ms, shift_s = _start(table, where)
    return Replay(
        path,
        columns,
        start_ms=start_ms,
        shift_s=shift_s,
        speed=checks.number(table, "speed", where, 1.0, low=1e-6, high=1e9),
        loop=checks.flag(table, "loop", where),
        interval_s=checks.number(table, "interval_s", where, 1.0, low=0.01, high=3600.0),
        clock=clock,
        where=where,
    )


def _load(path: Path, columns: list[str], setting: str) -> pa.Table:
    """The file's table (CSV or Parquet, by suffix), with errors named after the option."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            names = pq.read_schema(path).names
            return pq.read_table(path, columns=[c for c in dict.fromkeys(columns) if c in names])
        if path.suffix.lower() in (".csv", ".txt"):
            return pacsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(setting, f"cannot read {path.name}: {exc}") from exc
    raise ConfigError(setting, f"{path.name}: only .csv and .parquet files can be replayed")


def _epoch_ms(column: pa.ChunkedArray, setting: str) -> np.ndarray:
    """Epoch milliseconds of a time column: integers as they are, timestamps and text (naive = UTC)."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        for target in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms")):
            try:
                column = column.cast(target)
                break
            except pa.ArrowInvalid:
                continue
        else:
            raise ConfigError(setting, "holds text that is not RFC 3339 / ISO 8601 times")
        kind = column.type
    if pa.types.is_timestamp(kind):
        column = column.cast(pa.timestamp("ms", tz=kind.tz)).cast(pa.int64())
    elif not pa.types.is_integer(kind):
        raise ConfigError(setting, f"must hold epoch milliseconds or timestamps, not {kind}")
    if column.null_count:
        raise ConfigError(setting, f"has {column.null_count} empty times")
    out: np.ndarray = np.asarray(column.cast(pa.int64()))
    return out


def _ids(column: pa.ChunkedArray, prefix: str, setting: str) -> pa.Array:
    """A column as id strings (integers become their digits), with the prefix, checked."""
    text = pc.cast(column.combine_chunks(), pa.string())
    if prefix:
        text = pc.binary_join_element_wise(prefix, text, "")
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(text, ID_PATTERN.pattern), False))
    if pc.any(bad).as_py():
        example = text.filter(bad)[0].as_py()
        raise ConfigError(setting, f"{example!r} is not a valid id (letters, digits, . _ -; 64 at most)")
    result: pa.Array = text
    return result


def _values(column: pa.ChunkedArray, setting: str) -> pa.Array:
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
        raise ConfigError(setting, f"must hold numbers, not {kind}")
    values: pa.Array = column.combine_chunks().cast(pa.float64())
    return values


def _start(table: Mapping[str, Any], where: str) -> tuple[int | None, float | None]:
    if "start" in table and "shift_s" in table:
        raise ConfigError(f"{where}.shift_s", "give either start or shift_s, not both")
    if "shift_s" in table:
        return None, checks.number(table, "shift_s", where, 0.0, low=-1e12, high=1e12)
    value = table.get("start", "now")
    if value == "now":
        return None, None
    return time_ms(value, f"{where}.start"), None
