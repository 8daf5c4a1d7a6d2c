"""Compaction of closed hours: one sorted file per site-hour, every reading kept, switched atomically.

In-process tests of the steps and of what readers see at each of them; tests/lake/test_compaction_kill.py
kills a real ``ironwatch compact`` at each step.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lakefiles import ALL_READINGS, HOURS, MINUTES, assert_rollups_match_raw, readings, sql, write

from ironwatch import lake
from ironwatch.lake import Root, compaction, journal, rebuild
from ironwatch.lake.checksum import Checksum
from ironwatch.model import READINGS_SCHEMA, utc_now_us

NOW = utc_now_us()
DAY_US = 86_400_000_000
POLICY = compaction.Policy(grace_s=0, row_group_rows=1000, chunk_rows=700)


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return lake.open_root(str(tmp_path / "acme"))


def filled(root: Root, seed: int = 1, files: int = 8) -> None:
    rng = np.random.default_rng(seed)
    sites = ("hall-a", "hall-b")
    write(
        root,
        [
            readings(rng, 900, sites=sites, batch=b, sensors=[f"s-{i}" for i in range(30)])
            for b in range(files)
        ],
    )


def raw_of_hours(root: Root) -> dict[tuple[str, str, int], list[str]]:
    out: dict[tuple[str, str, int], list[str]] = {}
    for path in lake.visible_files(root, "readings"):
        key = journal.key_of(path)
        assert key is not None
        out.setdefault(key[:3], []).append(key[3])
    return out


def run(root: Root, tmp: Path, policy: compaction.Policy = POLICY, **kw: object) -> dict[str, int]:
    return compaction.run(root, policy, tmp / "scratch", now_us=NOW, **kw)  # type: ignore[arg-type]


def test_each_closed_hour_becomes_one_sorted_file_with_the_same_readings(root: Root, tmp_path: Path) -> None:
    filled(root)
    before = sql(root, ALL_READINGS)
    report = run(root, tmp_path)
    assert report["hours"] == 4 and report["readings"] == len(before) == 7200
    hours = raw_of_hours(root)
    assert len(hours) == 4 and all(len(n) == 1 and n[0].startswith("c-") for n in hours.values())
    assert sql(root, ALL_READINGS) == before  # every reading exactly once, unchanged
    for path in root.list("readings"):
        table = pq.read_table(root.duckdb_glob(path))
        assert table.schema.remove_metadata() == READINGS_SCHEMA
        keys = list(zip(*(table[c].to_pylist() for c in ("sensor", "metric", "ts")), strict=True))
        assert keys == sorted(keys)
        meta = pq.ParquetFile(root.duckdb_glob(path)).metadata
        assert meta.num_row_groups > 1 and all(
            meta.row_group(g).num_rows <= 1000 for g in range(meta.num_row_groups)
        )
    assert_rollups_match_raw(root)
    assert run(root, tmp_path)["hours"] == 0  # nothing left to do


def test_rollups_of_a_compacted_hour_equal_a_rebuild_to_the_bit(root: Root, tmp_path: Path) -> None:
    filled(root, seed=2)
    run(root, tmp_path)
    compacted = (sql(root, MINUTES), sql(root, HOURS))
    rebuild.rebuild(root)
    assert (sql(root, MINUTES), sql(root, HOURS)) == compacted


def test_late_readings_for_a_compacted_hour_are_compacted_again(root: Root, tmp_path: Path) -> None:
    filled(root, seed=3)
    run(root, tmp_path)
    rng = np.random.default_rng(33)
    write(root, [readings(rng, 300, sites=("hall-a",), batch=50)], writer="w9")  # after the outage
    before = sql(root, ALL_READINGS)
    assert any(len(n) == 2 for n in raw_of_hours(root).values())
    assert run(root, tmp_path)["hours"] == 2
    assert sql(root, ALL_READINGS) == before
    assert all(len(n) == 1 for n in raw_of_hours(root).values())
    assert_rollups_match_raw(root)


def test_open_hours_are_left_alone(root: Root, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    start = NOW // 3_600_000_000 * 3_600_000_000 - 3_600_000_000
    write(root, [readings(rng, 200, start_us=start, span_s=3600, batch=b) for b in range(3)])
    assert run(root, tmp_path, compaction.Policy(close_after_s=7200))["hours"] == 0
    assert run(root, tmp_path, compaction.Policy(close_after_s=0, grace_s=0))["hours"] == 1


def test_readers_see_old_or_new_at_every_step_never_both_never_neither(root: Root, tmp_path: Path) -> None:
    filled(root, seed=5, files=4)
    want = sql(root, ALL_READINGS)
    hour, old = min(raw_of_hours(root).items())
    seen = []

    def check(step: str) -> None:
        names = raw_of_hours(root)[hour]
        seen.append((step, names == old or (len(names) == 1 and names[0].startswith("c-"))))
        assert sql(root, ALL_READINGS) == want, step
        assert sum(r[0] for r in sql(root, "SELECT count FROM rollup_1m")) == len(want), step
        assert sum(r[0] for r in sql(root, "SELECT count FROM rollup_1h")) == len(want), step

    run(root, tmp_path, pause=check, max_hours=1)
    assert seen == [(step, True) for step in compaction.STEPS]
    assert raw_of_hours(root)[hour] != old


def test_old_files_wait_for_the_grace_period_then_retire_then_go(root: Root, tmp_path: Path) -> None:
    filled(root, seed=6, files=3)
    old = set(root.list("readings"))
    policy = compaction.Policy(grace_s=60, retention_s=7 * 86400, row_group_rows=1000)
    run(root, tmp_path, policy)
    assert old <= set(root.list("readings"))  # still there for queries that listed them
    assert not (old & set(lake.visible_files(root, "readings")))  # but nobody sees them
    compaction.tidy(root, policy, now_us=NOW + 59_000_000)
    assert old <= set(root.list("readings"))
    done = compaction.tidy(root, policy, now_us=NOW + 61_000_000)
    assert done["retired"] == 4 and not (old & set(root.list("readings")))
    retired = root.list("retired")
    assert len(retired) == len(old) and root.list("rollup_1m") == sorted(
        lake.visible_files(root, "rollup_1m")
    )
    compaction.tidy(root, policy, now_us=NOW + 61_000_000 + 7 * DAY_US - 1_000_000)
    assert root.list("retired") == retired  # kept for the retention period
    done = compaction.tidy(root, policy, now_us=NOW + 61_000_000 + 7 * DAY_US)
    assert done["deleted"] == len(old) and root.list("retired") == [] and root.list(journal.FOLDER) == []


def test_a_file_that_fails_verification_is_rolled_back(root: Root, tmp_path: Path) -> None:
    filled(root, seed=7, files=3)
    before = (sql(root, ALL_READINGS), sql(root, MINUTES))
    old = set(root.list("readings"))

    def corrupt(step: str) -> None:
        if step == "written":  # the storage lost one reading of the new file
            new = next(p for p in root.list("readings") if "/c-" in p)
            table = pq.read_table(root.duckdb_glob(new))
            sink = pa.BufferOutputStream()
            pq.write_table(table.slice(1), sink)
            root.write(new, bytes(sink.getvalue()))

    with pytest.raises(compaction.VerificationFailed, match="rows:checksum"):
        run(root, tmp_path, pause=corrupt, max_hours=1)
    assert set(root.list("readings")) == old
    assert (sql(root, ALL_READINGS), sql(root, MINUTES)) == before
    assert [p.rsplit(".", 2)[1] for p in root.list(journal.FOLDER)] == ["aborted"]


def test_a_pending_compaction_left_by_a_crash_is_rolled_back(root: Root, tmp_path: Path) -> None:
    filled(root, seed=8, files=3)
    before = sql(root, ALL_READINGS)

    class Crash(BaseException):
        pass

    def crash(step: str) -> None:
        if step == "partials":
            raise Crash

    with pytest.raises(Crash):
        run(root, tmp_path, pause=crash, max_hours=1)
    assert sql(root, ALL_READINGS) == before
    run(root, tmp_path)
    assert sql(root, ALL_READINGS) == before and all(len(n) == 1 for n in raw_of_hours(root).values())


def test_compacting_a_memory_root_and_spilling_to_disk(tmp_path: Path) -> None:
    root = lake.open_root(f"memory://{uuid.uuid4().hex}")
    filled(root, seed=9)
    expected = Checksum()
    for path in root.list("readings"):
        expected.add(pq.read_table(pa.BufferReader(root.read(path))))
    report = run(root, tmp_path, compaction.Policy(grace_s=0, row_group_rows=500, chunk_rows=100))
    assert report["hours"] == 4
    found = Checksum()
    for path in lake.visible_files(root, "readings"):
        found.add(pq.read_table(pa.BufferReader(root.read(path))))
    assert (
        found == expected and (tmp_path / "scratch").exists() and not list((tmp_path / "scratch").iterdir())
    )


def test_a_replayed_segment_does_not_bring_compacted_readings_back(root: Root, tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    tables = [readings(rng, 500, batch=b) for b in range(3)]
    write(root, tables)
    run(root, tmp_path)
    after = sql(root, ALL_READINGS)
    write(root, tables)  # the flusher replays segments whose checkpoint a crash lost
    assert sql(root, ALL_READINGS) == after and len(after) == 1500


def test_checksum_sees_a_changed_a_lost_and_a_doubled_reading() -> None:
    rng = np.random.default_rng(11)
    t = readings(rng, 50).drop(["site"])

    def of(table: pa.Table) -> Checksum:
        c = Checksum()
        c.add(table)
        return c

    base = of(t)
    shuffled = of(t.take(pa.array(rng.permutation(50))))
    assert shuffled == base
    changed = t.set_column(3, "value", pa.array(np.r_[t["value"].to_numpy()[:-1], 0.5]))
    assert of(changed) != base and of(t.slice(1)) != base and of(pa.concat_tables([t, t.slice(0, 1)])) != base


def test_a_stopping_server_rolls_its_compaction_back(root: Root, tmp_path: Path) -> None:
    filled(root, seed=12, files=3)
    before = (sql(root, ALL_READINGS), sorted(root.list("readings")))
    hour = next(iter(compaction.hours_to_compact(root, NOW, POLICY)))
    with pytest.raises(compaction.Interrupted):
        compaction.compact_hour(root, hour, POLICY, tmp_path, now_us=NOW, stopping=lambda: True)
    assert (sql(root, ALL_READINGS), sorted(root.list("readings"))) == before
    assert [p.rsplit(".", 2)[1] for p in root.list(journal.FOLDER)] == ["aborted"]


def test_the_background_compactor_waits_until_an_hour_stops_changing(root: Root, tmp_path: Path) -> None:
    filled(root, seed=13, files=2)
    now = [NOW]
    compactor = lake.Compactor(lambda: [root], POLICY, data_dir=tmp_path, interval_s=60, clock=lambda: now[0])
    assert compactor.step() is False  # first look: each hour's files as they are now
    now[0] += 30_000_000
    rng = np.random.default_rng(14)
    write(root, [readings(rng, 100, sites=("hall-a",), span_s=60)], writer="w5")  # still flowing in
    assert compactor.step() is False
    now[0] += 30_000_000  # one interval since the first look
    while compactor.step():
        pass
    assert compactor.hours_compacted == 3 and len(compaction.hours_to_compact(root, NOW, POLICY)) == 1
    now[0] += 30_000_000  # one interval since hall-a's first hour last changed
    assert compactor.step() is True and compactor.hours_compacted == 4
