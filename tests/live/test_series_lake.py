"""The series service over real lake files: the same answers across a compaction, equal to SQL over
the views, and only the partitions of the range read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from ironwatch import config, lake, live
from ironwatch.errors import QueryError
from ironwatch.lake import Root
from ironwatch.model import TS_TYPE, utc_now_us

#: Three whole hours, three days ago: closed for compaction, and far older than the fresh tail.
HOUR = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
HOUR_US = int(HOUR.timestamp()) * 1_000_000
H_US = 3_600_000_000
SENSORS = ("s-1", "s-2")
METRICS = ("rpm", "temp")


def flushed(rng: np.random.Generator, n: int, site: str = "hall-a", start_us: int = HOUR_US) -> pa.Table:
    """Readings as the flusher hands them to the lake: whole milliseconds in three hours."""
    ts = start_us + rng.integers(0, 3 * 3_600_000, n) * 1000
    return pa.table(
        {
            "site": pa.array([site] * n),
            "ts": pa.array(ts).cast(TS_TYPE),
            "sensor": pa.array(rng.choice(SENSORS, n)),
            "metric": pa.array(rng.choice(METRICS, n)),
            "value": pa.array(np.round(rng.normal(50, 20, n), 3)),
            "gateway": pa.array(["gw-1"] * n),
            "batch": pa.array(np.ones(n, dtype=np.int64)),
            "received_at": pa.array(ts + 5_000_000).cast(TS_TYPE),
        }
    )


@pytest.fixture
def root(tmp_path: Path) -> Root:
    root = lake.open_root(str(tmp_path / "acme"))
    rng = np.random.default_rng(3)
    for seq in range(12):  # twelve log segments' files per hour, as the flusher leaves them
        lake.write_readings(root, flushed(rng, 2000), f"w0-{seq:012d}")
    return root


def answer(root: Root, **params: Any) -> dict[str, Any]:
    service = live.Series(config.load({}, env={}), lambda tenant: root, live.Recent(), utc_now_us)
    try:
        request = service.parse({"site": "hall-a", "sensor": "s-1", "metric": "temp", **params})
        doc: dict[str, Any] = orjson.loads(service.get("acme", request))
        return doc
    finally:
        service.close()


def at(offset_s: int) -> str:
    return (HOUR + timedelta(seconds=offset_s)).isoformat()


CASES = {
    "raw": {"start": at(600), "end": at(1800), "max_points": "5000"},
    "1m": {"start": at(0), "end": at(3 * 3600), "max_points": "500"},
    "1h": {"start": at(0), "end": at(3 * 3600), "max_points": "10"},
}


def view_sql(resolution: str) -> str:
    view, column = {"raw": ("readings", "ts"), "1m": ("rollup_1m", "minute"), "1h": ("rollup_1h", "hour")}[
        resolution
    ]
    values = "value, value, value, 1" if resolution == "raw" else "mean, min, max, count"
    case = CASES[resolution]
    return (
        f"SELECT epoch_ms({column}) AS ts, {values} FROM {view} WHERE site = 'hall-a' AND sensor = 's-1' "
        f"AND metric = 'temp' AND {column} >= '{case['start']}' AND {column} < '{case['end']}' "
        f"ORDER BY {column}"
    )


def columns(doc: dict[str, Any]) -> tuple[list[Any], ...]:
    return doc["ts"], doc["mean"], doc["min"], doc["max"], doc["count"]


@pytest.mark.parametrize("resolution", list(CASES))
def test_series_are_the_same_after_compaction_and_equal_sql_over_the_views(
    root: Root, tmp_path: Path, resolution: str
) -> None:
    before = answer(root, **CASES[resolution])
    assert before["resolution"] == resolution and before["points"] > 0
    report = lake.compaction.run(
        root, lake.compaction.Policy(grace_s=0), tmp_path / "scratch", now_us=utc_now_us()
    )
    assert report["hours"] == 3
    assert len(lake.visible_files(root, "readings")) == 3  # one file per hour now
    after = answer(root, **CASES[resolution])
    assert after["resolution"] == resolution
    b, a = columns(before), columns(after)
    assert a[0] == b[0] and a[2:] == b[2:]  # times, min, max, count: exactly
    assert a[1] == pytest.approx(b[1], rel=1e-12)  # means: the partials were merged anew
    sql = lake.query.run(root, view_sql(resolution))
    assert a == tuple(column.to_pylist() for column in sql.columns)


def test_only_the_partitions_of_the_range_are_read(root: Root) -> None:
    garbage = b"this is not a Parquet file"
    next_hour = HOUR + timedelta(hours=3)  # after the data
    for path in (
        f"readings/site=hall-a/date={next_hour:%Y-%m-%d}/hour={next_hour:%H}/w0-bad.parquet",
        f"rollup_1m/site=hall-a/date={next_hour:%Y-%m-%d}/hour={next_hour:%H}/w0-bad.parquet",
        f"readings/site=hall-b/date={HOUR:%Y-%m-%d}/hour={HOUR:%H}/w0-bad.parquet",
    ):
        root.write(path, garbage)
    # The garbage is outside these ranges (another hour, another site): never opened.
    for case in CASES.values():
        assert answer(root, **case)["points"] > 0
    # Inside a range it is read, and the error says so (a 400 with the reason, not a 500).
    with pytest.raises(QueryError, match="raw readings of site hall-a"):
        answer(root, start=at(3 * 3600), end=at(3 * 3600 + 600))
