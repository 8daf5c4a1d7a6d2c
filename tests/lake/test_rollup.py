"""Rollups kept as partial aggregates per raw file: exact, corrected by late data, idempotent, rebuildable.

Raw files are written with ``lake.write_readings``, as the flusher writes them; every answer is read
through the sandboxed SQL views over the real files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from lakefiles import (
    ALL_READINGS,
    HOUR_US,
    HOURS,
    MINUTES,
    assert_rollups_match_raw,
    readings,
    sql,
    table,
    write,
)

from ironwatch import lake
from ironwatch.lake import Root, journal, rebuild, rollup


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return lake.open_root(str(tmp_path / "acme"))


def test_partials_of_one_file_are_the_aggregates_of_its_readings(root: Root) -> None:
    rng = np.random.default_rng(1)
    write(root, [readings(rng, 3000, sites=("hall-a", "hall-b"))])
    assert_rollups_match_raw(root)
    paths = root.list("rollup_1m") + root.list("rollup_1h")
    assert len(paths) == 2 * len(root.list("readings"))  # one of each per raw file, same name


def test_late_and_out_of_order_readings_correct_the_minutes_they_belong_to(root: Root) -> None:
    rng = np.random.default_rng(2)
    on_time = readings(rng, 2000, span_s=3600)
    write(root, [on_time.slice(i, 500) for i in range(0, 2000, 500)])
    before = {r[:4]: r for r in sql(root, MINUTES)}
    # After an outage: readings for minutes already rolled up, in shuffled order, in later segments.
    late = readings(rng, 1500, span_s=3600, batch=7)
    late = late.take(pa.array(rng.permutation(late.num_rows)))
    write(root, [late.slice(i, 300) for i in range(0, 1500, 300)], writer="w2")
    assert_rollups_match_raw(root)
    after = {r[:4]: r for r in sql(root, MINUTES)}
    changed = [k for k in before if after[k][4] != before[k][4]]
    assert changed  # old minutes grew; none was rolled up twice
    assert sum(r[4] for r in after.values()) == 3500


def test_a_segment_written_twice_counts_once(root: Root) -> None:
    rng = np.random.default_rng(3)
    tables = [readings(rng, 800), readings(rng, 800)]
    write(root, tables)
    first = (sql(root, MINUTES), sql(root, HOURS), sql(root, ALL_READINGS))
    files = {p: root.read(p) for p in root.list("")}
    write(root, tables)  # the log replayed after a crash: same names, nothing written
    assert {p: root.read(p) for p in root.list("")} == files
    assert (sql(root, MINUTES), sql(root, HOURS), sql(root, ALL_READINGS)) == first
    assert sum(r[4] for r in first[0]) == 1600


def test_partials_missing_after_a_crash_are_written_on_replay(root: Root) -> None:
    rng = np.random.default_rng(4)
    tables = [readings(rng, 600)]
    write(root, tables)
    expected = sql(root, MINUTES)
    for path in root.list("rollup_1m") + root.list("rollup_1h")[:1]:
        root.delete(path)  # the crash came after the raw file, before (some of) its partials
    assert sum(r[4] for r in sql(root, MINUTES)) == 0
    write(root, tables)
    assert sql(root, MINUTES) == expected


def test_several_readings_at_the_last_instant_take_the_largest_as_last(root: Root) -> None:
    ts = [HOUR_US + 1_000_000, HOUR_US + 2_000_000, HOUR_US + 2_000_000, HOUR_US + 2_000_000]
    one = table(ts[:3], ["hall-a"] * 3, ["s-1"] * 3, ["rpm"] * 3, [1.0, 9.0, 3.0])
    other = table(ts[3:], ["hall-a"], ["s-1"], ["rpm"], [5.0])
    write(root, [one])
    assert sql(root, "SELECT count, last, max FROM rollup_1m") == [(3, 9.0, 9.0)]
    write(root, [other], writer="w2")  # the same instant again, in a file of its own
    assert sql(root, "SELECT count, last FROM rollup_1m") == [(4, 9.0)]
    assert_rollups_match_raw(root)


def test_std_is_null_for_one_reading_and_exact_for_one_partial(root: Root) -> None:
    base = 1_234_567.891  # a counter: large mean, small spread, where sums of squares fail
    ts = [HOUR_US + i * 1_000_000 for i in range(4)]
    write(
        root, [table(ts, ["hall-a"] * 4, ["s-1"] * 4, ["kwh"] * 4, [base, base + 0.001, base, base + 0.002])]
    )
    write(root, [table([HOUR_US + 60_000_000], ["hall-a"], ["s-1"], ["kwh"], [base])], writer="w2")
    rows = sql(root, "SELECT minute, count, std FROM rollup_1m ORDER BY minute")
    assert rows[1][1:] == (1, None)
    want = float(np.std([base, base + 0.001, base, base + 0.002], ddof=1))
    assert rows[0][1] == 4 and abs(rows[0][2] - want) < 1e-9


def test_rebuild_from_raw_gives_the_same_answers_to_the_bit(root: Root) -> None:
    rng = np.random.default_rng(5)
    write(root, [readings(rng, 700, batch=b) for b in range(6)])
    write(root, [readings(rng, 400, batch=99)], writer="w2")  # late data in files of their own
    queries = [MINUTES, HOURS, "SELECT fsum(mean), fsum(std), sum(count) FROM rollup_1m"]
    incremental = [sql(root, q) for q in queries]
    report = rebuild.rebuild(root)
    assert report.files == report.files_total == len(root.list("readings"))
    assert report.orphans_deleted == 0 and report.readings == 4600
    assert [sql(root, q) for q in queries] == incremental


def test_rebuild_removes_rollups_whose_raw_file_is_gone_and_respects_site_and_since(root: Root) -> None:
    rng = np.random.default_rng(6)
    write(root, [readings(rng, 500, sites=("hall-a", "hall-b"), span_s=7200)])  # two hours, two sites
    gone = root.list("readings/site=hall-b")[0]
    root.delete(gone)  # an operator removed a raw file by hand
    kept = {p: root.read(p) for p in root.list("rollup_1m/site=hall-a")}
    report = rebuild.rebuild(root, site="hall-b")
    assert (report.files, report.orphans_deleted) == (1, 2)  # its minute and hour partials
    assert {p: root.read(p) for p in root.list("rollup_1m/site=hall-a")} == kept
    assert_rollups_match_raw(root)
    second_hour = HOUR_US + 3_600_000_000
    later = rebuild.rebuild(root, since_us=second_hour)
    in_second_hour = [p for p in root.list("readings") if journal.key_of(p)[:3] in _hours_from(second_hour)]
    assert later.files == len(in_second_hour) == 2


def _hours_from(start_us: int) -> set[tuple[str, str, int]]:
    moment = datetime.fromtimestamp(start_us / 1e6, UTC)
    return {(site, f"{moment:%Y-%m-%d}", moment.hour) for site in ("hall-a", "hall-b")}


def test_bench_sized_hour_is_rolled_up_fast_enough() -> None:
    """The vectorised path: no Python loop per reading (a 1 Hz site-hour has 33.66M of them)."""
    from ironwatch.bench.sitegen import Site

    hour = Site(40, HOUR_US).table(0, 3600)  # 2.4M readings
    minutes, hours = rollup.of_table(hour)
    assert minutes.num_rows == 40 * 17 * 60 and hours.num_rows == 40 * 17
    assert pa.compute.sum(minutes["count"]).as_py() == hour.num_rows
