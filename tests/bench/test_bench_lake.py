"""The rollup and query benchmarks in a tiny form, through the command, so that they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def bench(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "ironwatch.cli", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)  # one JSON object, progress on stderr
    return result


def test_bench_rollup() -> None:
    result = bench("rollup", "--sensors", "6", "--seconds", "600", "--runs", "2")
    assert result["readings"] == 6 * 17 * 600
    assert result["minute_partials"] == 6 * 17 * 10 and result["hour_partials"] == 6 * 17
    assert isinstance(result["rows_per_s"], int) and result["rows_per_s"] > 0
    assert {"median_s", "site_hour_s", "meets_target", "target_rows_per_s"} <= result.keys()


def test_bench_query_builds_a_lake_once_and_reads_whole_days(tmp_path: Path) -> None:
    folder = tmp_path / "lake"
    result = bench("query", "--days", "1", "--sensors", "3", "--queries", "4", "--lake-dir", str(folder))
    assert result["readings"] == 24 * 3600 * 3 * 17 and result["raw_files"] == 24
    assert result["hours_built"] == 24 and result["queries"] == 4
    assert 0 < result["p50_ms"] <= result["p95_ms"]  # type: ignore[operator]
    assert 0 < result["bytes_per_reading"] < 16  # type: ignore[operator]
    again = bench("query", "--days", "1", "--sensors", "3", "--queries", "2", "--lake-dir", str(folder))
    assert again["hours_built"] == 0  # kept and reused
