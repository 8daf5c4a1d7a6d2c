"""The pool of sandboxed DuckDBs: reused within a tenant, never across, fresh views, safe after failures.

Every test goes through ``lake.query.run`` / ``stream`` with a ``lake.Pool``, the path of the
server's queries, over real Parquet files in ``tmp_path``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from lakefiles import ALL_READINGS, readings, write
from prometheus_client import CollectorRegistry

from ironwatch import lake
from ironwatch.errors import QueryError, StorageError
from ironwatch.lake import Root, compaction, journal
from ironwatch.model import utc_now_us

COUNT = "SELECT count(*) AS n FROM readings"
LONG = "SELECT sum(i) FROM range(1000000000000) t(i)"


def rows(root: Root, sql: str, pool: lake.Pool, **kw: Any) -> list[tuple[Any, ...]]:
    answer = lake.query.run(root, sql, pool=pool, **kw)
    return list(zip(*(c.to_pylist() for c in answer.columns), strict=True))


def count(root: Root, pool: lake.Pool) -> int:
    return int(rows(root, COUNT, pool)[0][0])


@pytest.fixture
def pool() -> Any:
    with lake.Pool(idle=4, idle_per_root=2) as p:
        yield p


def tenant(tmp_path: Path, name: str, sensors: tuple[str, ...], files: int = 2, n: int = 500) -> Root:
    root = lake.open_root(str(tmp_path / name))
    rng = np.random.default_rng(len(name))
    write(root, [readings(rng, n, sensors=sensors, batch=b) for b in range(files)])
    return root


def test_a_tenants_queries_reuse_one_sandbox(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    for _ in range(5):
        assert count(root, pool) == 1000
    assert rows(root, "SELECT 1 AS one", pool) == [(1,)]
    assert pool.created == 1 and pool.idle_count(root.url) == 1


def test_a_sandbox_never_serves_another_tenant(tmp_path: Path, pool: lake.Pool) -> None:
    acme = tenant(tmp_path, "acme", ("a-1", "a-2"), n=300)
    bolt = tenant(tmp_path, "bolt", ("b-1",), files=3, n=200)
    sensors = "SELECT DISTINCT sensor FROM readings ORDER BY sensor"
    other_file = tmp_path / "bolt" / lake.visible_files(bolt, "readings")[0]
    for _ in range(3):
        assert rows(acme, sensors, pool) == [("a-1",), ("a-2",)] and count(acme, pool) == 600
        assert rows(bolt, sensors, pool) == [("b-1",)] and count(bolt, pool) == 600
        assert rows(acme, "SELECT current_setting('allowed_directories') AS d", pool) == [
            ([f"{tmp_path / 'acme'}/"],)
        ]
        with pytest.raises(QueryError):  # the other tenant's file, from a sandbox that has served before
            rows(acme, f"SELECT count(*) FROM read_parquet('{other_file}')", pool)
    assert pool.created == 2
    assert pool.idle_count(acme.url) == 1 and pool.idle_count(bolt.url) == 1


def test_new_files_show_up_once_after_a_flush_and_after_a_compaction(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1", "s-2"), files=3, n=400)
    want = rows(root, ALL_READINGS, pool)
    assert len(want) == 1200
    write(root, [readings(np.random.default_rng(9), 250, sensors=("s-3",), batch=7)], writer="w2")
    assert count(root, pool) == 1450
    policy = compaction.Policy(grace_s=0, row_group_rows=1000, chunk_rows=700)
    seen: list[int] = []

    def check(step: str) -> None:  # a pooled query at every step of the switch: old or new, never both
        seen.append(count(root, pool))
        assert rows(root, "SELECT sum(count)::BIGINT FROM rollup_1m", pool) == [(1450,)], step

    report = compaction.run(root, policy, tmp_path / "scratch", now_us=utc_now_us(), pause=check)
    assert report["hours"] >= 1
    assert set(seen) == {1450} and count(root, pool) == 1450
    assert all(journal.key_of(p) for p in lake.visible_files(root, "readings"))
    assert pool.created == 1


def test_a_timed_out_query_closes_its_sandbox_and_the_next_is_right(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    assert count(root, pool) == 1000
    with pytest.raises(QueryError, match="time limit"):
        lake.query.run(root, LONG, timeout_s=0.3, pool=pool)
    assert pool.idle_count() == 0
    assert count(root, pool) == 1000 and pool.created == 2


def test_a_cancelled_query_leaves_the_pool_usable(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    assert count(root, pool) == 1000
    with (
        pytest.raises(QueryError, match="cancelled"),
        lake.query.stream(
            root, LONG, pool=pool, on_open=lambda s: threading.Timer(0.2, s.stop).start()
        ) as answer,
    ):
        list(answer)
    assert count(root, pool) == 1000 and pool.created == 2


def test_a_failing_query_keeps_its_sandbox_and_the_next_is_right(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    for bad in ("SELECT nope FROM readings", "SELEC 1", "SELECT 1; SELECT 2", "COPY readings TO 'x'"):
        with pytest.raises(QueryError):
            lake.query.run(root, bad, pool=pool)
        assert count(root, pool) == 1000
    with pytest.raises(QueryError, match="more than 10 rows"):
        lake.query.run(root, "SELECT * FROM range(100000)", max_rows=10, pool=pool)
    with pytest.raises(QueryError, match="memory"):
        lake.query.run(root, "SELECT list(i) FROM range(100000000) t(i)", memory_limit="64MB", pool=pool)
    assert count(root, pool) == 1000
    assert rows(root, "SELECT count(*) FROM range(100000)", pool, memory_limit="64MB") == [(100000,)]
    assert pool.created == 2  # one per memory limit


def test_a_stop_after_the_end_does_not_reach_the_next_query(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    with lake.query.stream(root, COUNT, pool=pool) as first:
        list(first)
    with lake.query.stream(root, "SELECT count(*) FROM range(300000000) t(i)", pool=pool) as second:
        first.stop()  # a cancel racing the end of the first query: the sandbox is the second's now
        assert [b.to_pylist() for b in second] == [[{"count_star()": 300000000}]]
    assert pool.created == 1


def test_registered_tables_do_not_outlive_their_query(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    sensors = pa.table({"sensor": ["s-1"], "status": ["ok"]})
    assert rows(root, "SELECT * FROM sensors", pool, tables={"sensors": sensors}) == [("s-1", "ok")]
    with pytest.raises(QueryError, match="sensors"):
        rows(root, "SELECT * FROM sensors", pool)
    assert rows(root, "SELECT count(*) FROM duckdb_views() WHERE NOT internal", pool) == [(4,)]
    newer = pa.table({"sensor": ["s-1", "s-2"], "status": ["ok", "dead"]})
    assert rows(root, "SELECT count(*) FROM sensors", pool, tables={"sensors": newer}) == [(2,)]
    assert pool.created == 1


def test_views_a_query_cannot_name_are_gone_as_in_a_new_duckdb(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    assert count(root, pool) == 1000
    spelled = "SELECT * FROM query('SELECT count(*) FROM rea' || 'dings')"
    with pytest.raises(QueryError, match="does not exist"):
        rows(root, spelled, pool)


def test_a_query_leaves_nothing_behind_for_the_next(tmp_path: Path, pool: lake.Pool) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    state = (
        "SELECT (SELECT count(*) FROM duckdb_tables()) AS tables, "
        "(SELECT count(*) FROM duckdb_prepared_statements()) AS prepared, "
        "(SELECT count(*) FROM duckdb_variables()) AS variables, "
        "(SELECT count(*) FROM duckdb_sequences()) AS sequences, "
        "(SELECT count(*) FROM duckdb_functions() WHERE NOT internal) AS macros"
    )
    before = rows(root, state, pool)
    for sql in ("SELECT * FROM enable_profiling()", "SELECT * FROM enable_logging()", "SET threads = 1"):
        with pytest.raises(QueryError):
            rows(root, sql, pool)
    rows(root, "SELECT setseed(0.5)", pool)
    fresh = duckdb.connect(":memory:")
    fresh.execute("SELECT setseed(0.5)")
    seeded = fresh.execute("SELECT random()").fetchall()
    assert rows(root, "SELECT random()", pool) != seeded  # drawn again, as a new DuckDB draws it
    assert rows(root, state, pool) == before == [(0, 0, 0, 0, 0)]
    assert rows(root, "SELECT current_setting('threads')", pool) == [(2,)]
    assert pool.created == 1


def test_queries_at_the_same_time_get_their_own_sandboxes(tmp_path: Path) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    with lake.Pool(idle=4, idle_per_root=2) as pool:
        with (
            lake.query.stream(root, COUNT, pool=pool) as a,
            lake.query.stream(root, COUNT, pool=pool) as b,
            lake.query.stream(root, COUNT, pool=pool) as c,
        ):
            assert len({id(a._con), id(b._con), id(c._con)}) == 3
            assert [next(iter(s)).to_pylist() for s in (a, b, c)] == [[{"n": 1000}]] * 3
        assert pool.created == 3 and pool.idle_count() == 2  # the third is closed: at most 2 kept
        results: list[int] = []
        workers = [threading.Thread(target=lambda: results.append(count(root, pool))) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert results == [1000] * 4 and pool.idle_count() == 2


def test_idle_sandboxes_are_bounded_and_closed(tmp_path: Path) -> None:
    roots = [tenant(tmp_path, name, ("s-1",), files=1) for name in ("a1", "b2", "c3")]
    with lake.Pool(idle=2, idle_per_root=1) as pool:
        for root in roots:
            assert count(root, pool) == 500
        assert pool.idle_count() == 2 and pool.idle_count(roots[0].url) == 0  # least recently used
    assert pool.is_closed and pool.idle_count() == 0
    with lake.Pool(idle_s=0.0) as pool:
        count(roots[0], pool)
        count(roots[0], pool)
        assert pool.created == 2  # kept no time at all: closed when the pool is next used
    with lake.Pool(idle=0) as pool:
        count(roots[0], pool)
        assert pool.idle_count() == 0


def test_the_pool_counts_queries_by_outcome_and_serves_them_to_prometheus(tmp_path: Path) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    registry = CollectorRegistry()
    with lake.Pool(idle=4, idle_per_root=2) as pool:
        lake.pool.watch(registry, pool)
        for _ in range(3):
            assert count(root, pool) == 1000
        with pytest.raises(QueryError):
            lake.query.run(root, "SELECT nope FROM readings", pool=pool)
        with pytest.raises(QueryError, match="time limit"):
            lake.query.run(root, LONG, timeout_s=0.3, pool=pool)

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        assert {o: sample("ironwatch_query_count", outcome=o) for o in lake.pool.OUTCOMES} == {
            "ok": 3,
            "error": 1,
            "stopped": 1,
            "failed": 0,
        }
        stopped_s = sample("ironwatch_query_sum", outcome="stopped")
        assert stopped_s is not None and 0.3 <= stopped_s < 10
        assert sample("ironwatch_query_sandboxes_created_total") == 1  # the stopped one is replaced later
        assert sample("ironwatch_query_sandboxes_discarded_total") == 1
        assert sample("ironwatch_query_sandboxes_idle") == 0
        assert sample("ironwatch_query_sandboxes_in_use") == 0
        with lake.query.stream(root, COUNT, pool=pool) as answer:
            assert sample("ironwatch_query_sandboxes_in_use") == 1
            list(answer)
        assert sample("ironwatch_query_sandboxes_in_use") == 0
        assert sample("ironwatch_query_sandboxes_created_total") == 2
        assert sample("ironwatch_query_sandboxes_idle") == 1


def test_a_stream_given_up_early_is_stopped_and_a_storage_failure_is_failed(tmp_path: Path) -> None:
    root = tenant(tmp_path, "acme", ("s-1",))
    with lake.Pool(idle=4, idle_per_root=2) as pool:

        def batches() -> Iterator[Any]:
            with lake.query.stream(root, "SELECT * FROM readings", pool=pool, batch_rows=100) as answer:
                yield from answer

        consumer = batches()
        next(consumer)
        consumer.close()  # as a web response does when its client goes away
        with pytest.raises(StorageError), pool.lease(root, COUNT, memory_limit="256MB"):
            raise StorageError("cannot write the job's result")
        queries = pool.figures().queries
        assert (queries["stopped"], queries["failed"], queries["error"]) == (1, 1, 0)
        assert count(root, pool) == 1000  # and the pool still answers
