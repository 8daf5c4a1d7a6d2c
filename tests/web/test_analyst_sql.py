"""Analyst SQL over HTTP: ordinary SQL answers right, escapes are refused, errors are 400s with a
position, every type answers in every format, and queries stop at their time and memory limits.

tests/web/test_isolation.py holds the first 31 sandbox escapes; ``MORE_ESCAPES`` here adds others
(other table functions, other ways to spell a path, statements that are not SELECT), each refused
both by ``POST /api/v1/query`` and by a query job.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from conftest import Lab, Server, Tenant, wait_until
from seed import assert_error, readings, send

TIMEOUT_S = 3
MEMORY_LIMIT = "100MB"


@dataclass
class World:
    lab: Lab
    server: Server
    acme: Tenant
    acme2: Tenant

    def analyst(self) -> httpx.Client:
        return self.server.client(self.acme.keys["analyst"])

    def root(self, tenant: str) -> Path:
        return self.lab.data_dir / "lake" / tenant


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = Lab(tmp_path_factory.mktemp("analyst") / "data")
    acme, acme2 = lab.tenant("acme"), lab.tenant("acme2")
    server = lab.server(
        IRONWATCH_QUERY__TIMEOUT_S=str(TIMEOUT_S),
        IRONWATCH_QUERY__JOB_TIMEOUT_S=str(TIMEOUT_S),
        IRONWATCH_QUERY__MEMORY_LIMIT=MEMORY_LIMIT,
        IRONWATCH_QUERY__WORKERS="1",
        IRONWATCH_QUERY__MAX_JOBS="2",
    )
    try:
        send(server, acme, "hall-a", readings("hall-a", ["a-1", "a-2", "a-3"], ["rpm", "temp"], 60))
        send(server, acme2, "hall-b", readings("hall-b", ["b-1"], ["rpm"], 5))
        yield World(lab, server, acme, acme2)
    finally:
        lab.close()


def query(client: httpx.Client, sql: str, fmt: str = "json") -> httpx.Response:
    return client.post("/api/v1/query", json={"sql": sql, "format": fmt})


def job_of(client: httpx.Client, sql: str) -> dict[str, Any]:
    """Run ``sql`` as a query job and return the finished job."""
    answer = client.post("/api/v1/queries", json={"sql": sql})
    assert answer.status_code == 202, answer.text
    url = f"/api/v1/queries/{answer.json()['id']}"
    done: dict[str, Any] = wait_until(
        lambda: (j := client.get(url).json())["status"] in {"succeeded", "failed", "cancelled"} and j,
        timeout_s=60,
        what=f"{url} to finish",
    )
    return done


# --- ordinary SQL -----------------------------------------------------------------------------------

ORDINARY: dict[str, tuple[str, list[list[Any]]]] = {
    "CTE": (
        "WITH top AS (SELECT sensor, max(value) AS m FROM readings WHERE metric = 'rpm' GROUP BY sensor) "
        "SELECT sensor, m FROM top ORDER BY sensor",
        [["a-1", 59.0], ["a-2", 69.0], ["a-3", 79.0]],
    ),
    "window frame and QUALIFY": (
        "SELECT sensor, sum(value) OVER (PARTITION BY sensor ORDER BY ts ROWS 2 PRECEDING) "
        "FROM readings WHERE metric = 'rpm' QUALIFY row_number() OVER (PARTITION BY sensor ORDER BY ts) = 3 "
        "ORDER BY sensor",
        [["a-1", 3.0], ["a-2", 33.0], ["a-3", 63.0]],
    ),
    "self join": (
        "SELECT a.sensor, b.sensor, count(*) FROM readings a JOIN readings b "
        "ON a.ts = b.ts AND a.metric = b.metric AND a.sensor < b.sensor WHERE a.metric = 'rpm' "
        "GROUP BY ALL ORDER BY ALL",
        [["a-1", "a-2", 60], ["a-1", "a-3", 60], ["a-2", "a-3", 60]],
    ),
    "ASOF join": (
        "SELECT count(*) FROM readings a ASOF JOIN readings b "
        "ON a.sensor = b.sensor AND a.metric = b.metric AND a.ts > b.ts",
        [[354]],
    ),
    "LATERAL join": (
        "SELECT s.sensor, t.v FROM (SELECT DISTINCT sensor FROM readings) s, "
        "LATERAL (SELECT max(value) AS v FROM readings r WHERE r.sensor = s.sensor) t ORDER BY 1",
        [["a-1", 59.0], ["a-2", 69.0], ["a-3", 79.0]],
    ),
    "correlated subquery": (
        "SELECT s.sensor, (SELECT min(value) FROM readings r WHERE r.sensor = s.sensor) "
        "FROM (SELECT DISTINCT sensor FROM readings) s ORDER BY 1",
        [["a-1", 0.0], ["a-2", 10.0], ["a-3", 20.0]],
    ),
    "read_parquet of the own files": (
        "SELECT count(*) FROM read_parquet('{own}/readings/**/*.parquet')",
        [[360]],
    ),
    "read_parquet with Hive partitions": (
        "SELECT DISTINCT site, hour "
        "FROM read_parquet('{own}/readings/*/*/*/*.parquet', hive_partitioning = true)",
        [["hall-a", 10]],
    ),
    "parquet_metadata of the own files": (
        "SELECT sum(num_values) > 0 FROM parquet_metadata('{own}/readings/**/*.parquet')",
        [[True]],
    ),
    "partition columns": ("SELECT DISTINCT site, date, hour FROM readings", [["hall-a", "2026-11-24", 10]]),
    "time_bucket": (
        "SELECT time_bucket(INTERVAL 10 SECOND, ts) AS b, count(*) FROM readings "
        "GROUP BY b ORDER BY b LIMIT 2",
        [["2026-11-24T10:00:00+00:00", 60], ["2026-11-24T10:00:10+00:00", 60]],
    ),
    "median and quantile": (
        "SELECT sensor, median(value), round(quantile_cont(value, 0.9), 3) FROM readings "
        "WHERE metric = 'temp' GROUP BY sensor ORDER BY sensor",
        [["a-1", 29.5, 53.1], ["a-2", 39.5, 63.1], ["a-3", 49.5, 73.1]],
    ),
    "PIVOT with listed values": (
        "PIVOT readings ON metric IN ('rpm', 'temp') USING max(value) GROUP BY sensor ORDER BY sensor",
        [["a-1", 59.0, 59.0], ["a-2", 69.0, 69.0], ["a-3", 79.0, 79.0]],
    ),
    "ROLLUP": (
        "SELECT sensor, count(*) FROM readings GROUP BY ROLLUP (sensor) ORDER BY sensor NULLS LAST",
        [["a-1", 120], ["a-2", 120], ["a-3", 120], [None, 360]],
    ),
    "list aggregate and slice": (
        "SELECT sensor, list(value ORDER BY ts)[1:3] FROM readings WHERE metric = 'rpm' "
        "GROUP BY 1 ORDER BY 1",
        [["a-1", [0.0, 1.0, 2.0]], ["a-2", [10.0, 11.0, 12.0]], ["a-3", [20.0, 21.0, 22.0]]],
    ),
    "FILTER clause": ("SELECT count(*) FILTER (WHERE value >= 50), count(*) FROM readings", [[120, 360]]),
    "UNION ALL": (
        "SELECT 'rpm' AS m, count(*) FROM readings WHERE metric = 'rpm' "
        "UNION ALL SELECT 'temp', count(*) FROM readings WHERE metric = 'temp' ORDER BY 1",
        [["rpm", 180], ["temp", 180]],
    ),
    "regexp and casts": (
        "SELECT DISTINCT regexp_extract(sensor, '\\d+')::INTEGER AS n FROM readings ORDER BY n",
        [[1], [2], [3]],
    ),
    "timestamp arithmetic": (
        "SELECT max(ts) - min(ts), epoch_ms(min(ts)), strftime(min(ts), '%H:%M') FROM readings",
        [["00:00:59", 1795514400000, "10:00"]],
    ),
    "SUMMARIZE": ("SELECT count FROM (SUMMARIZE readings) WHERE column_name = 'value'", [[360]]),
    "quarantine view": ("SELECT count(*) FROM quarantine", [[0]]),
    "unnest": ("SELECT unnest([1, 2, 3]) AS x", [[1], [2], [3]]),
}


@pytest.mark.parametrize("name", list(ORDINARY))
def test_ordinary_analyst_sql_answers_right(world: World, name: str) -> None:
    sql, expected = ORDINARY[name]
    with world.analyst() as c:
        answer = query(c, sql.format(own=world.root("acme")))
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == expected


def test_ordinary_sql_in_a_job_gives_the_same_rows(world: World) -> None:
    sql = ORDINARY["window frame and QUALIFY"][0]
    with world.analyst() as c:
        done = job_of(c, sql)
        assert done["status"] == "succeeded", done
        assert c.get(f"/api/v1/queries/{done['id']}/result").text.splitlines()[1:] == [
            '"a-1",3',
            '"a-2",33',
            '"a-3",63',
        ]


# --- escapes --------------------------------------------------------------------------------------------

MORE_ESCAPES = {
    "a list of paths with the other root": (
        "SELECT * FROM read_parquet(['{own}/readings/**/*.parquet', '{other}/readings/**/*.parquet'])"
    ),
    "replacement scan of a path": "SELECT * FROM '{other}/readings/**/*.parquet'",
    "file:// URL": "SELECT * FROM read_parquet('file://{other}/readings/**/*.parquet')",
    "parquet_metadata of the other root": "SELECT * FROM parquet_metadata('{other}/readings/**/*.parquet')",
    "parquet_schema of the other root": "SELECT * FROM parquet_schema('{other}/readings/**/*.parquet')",
    "query() around read_csv": "SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')",
    "query_table of a path": "SELECT * FROM query_table('{other}/readings/**/*.parquet')",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    "process environment": "SELECT * FROM read_text('/proc/self/environ')",
    "/proc/self/root": "SELECT * FROM read_parquet('/proc/self/root{other}/readings/**/*.parquet')",
    "glob brackets": "SELECT * FROM read_parquet('{lake}/acme[2]/readings/**/*.parquet')",
    "glob question mark": "SELECT * FROM read_parquet('{lake}/acme?/readings/**/*.parquet')",
    "// and ..": "SELECT * FROM read_parquet('{own}//../acme2/readings/**/*.parquet')",
    "./ and ..": "SELECT * FROM read_parquet('{own}/./../acme2/readings/**/*.parquet')",
    "home directory": "SELECT * FROM read_text('~/.bash_history')",
    "https": "SELECT * FROM read_csv('https://example.com/x.csv')",
    "s3": "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "secrets": "SELECT * FROM duckdb_secrets()",
    "UNION with the other root": (
        "SELECT * FROM readings UNION ALL "
        "SELECT * FROM read_parquet('{other}/readings/**/*.parquet', hive_partitioning = true)"
    ),
    "path built by concat": "SELECT * FROM read_parquet(concat('{other}', '/readings/**/*.parquet'))",
    "DESCRIBE of the other root": "DESCRIBE SELECT * FROM read_parquet('{other}/readings/**/*.parquet')",
    "read_blob of /dev/zero": "SELECT * FROM read_blob('/dev/zero')",
    "SET memory_limit": "SET memory_limit = '100GB'",
    "SET threads": "SET threads = 64",
    "CREATE MACRO": "CREATE MACRO evil() AS TABLE SELECT * FROM read_csv('/etc/passwd')",
    "CREATE SECRET": "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "EXPLAIN ANALYZE": "EXPLAIN ANALYZE SELECT * FROM read_csv('/etc/passwd')",
    "LOAD a file": "LOAD '/tmp/evil.duckdb_extension'",
    "PREPARE": "PREPARE p AS SELECT * FROM read_csv('/etc/passwd')",
    "PIVOT that creates a type": "PIVOT readings ON metric USING count(*)",
}


def _format(world: World, sql: str) -> str:
    return sql.format(own=world.root("acme"), other=world.root("acme2"), lake=world.lab.data_dir / "lake")


@pytest.mark.parametrize("sql", list(MORE_ESCAPES.values()), ids=list(MORE_ESCAPES))
def test_more_sql_that_leaves_the_tenant_root_is_refused(world: World, sql: str) -> None:
    before = sorted(world.lab.data_dir.rglob("*.parquet"))
    with world.analyst() as c:
        error = assert_error(query(c, _format(world, sql)), 400, "query")
    assert "b-1" not in error["message"]
    assert sorted(world.lab.data_dir.rglob("*.parquet")) == before


def test_escapes_are_refused_in_query_jobs_too(world: World) -> None:
    with world.analyst() as c:
        for name in ("a list of paths with the other root", "query() around read_csv", "SET threads"):
            done = job_of(c, _format(world, MORE_ESCAPES[name]))
            assert done["status"] == "failed" and done["error"]["code"] == "query", (name, done)


# --- errors and answer formats --------------------------------------------------------------------------


def test_sql_errors_are_400_with_duckdbs_message_and_position(world: World) -> None:
    with world.analyst() as c:
        sql = "SELECT sensor\nFROM readings\nWHERE value > 'x'::DOUBLE"
        conversion = assert_error(query(c, sql), 400, "query")
        assert conversion["details"]["duckdb"] == "ConversionException"
        assert conversion["details"]["line"] == 3
        assert sql[conversion["details"]["position"] :].startswith("::DOUBLE")
        parse = assert_error(query(c, "SELECT sensor FROM readings WHER value > 1"), 400, "query")
        assert parse["details"] == {"duckdb": "ParserException", "line": 1, "column": 34, "position": 33}
        assert (
            parse["message"].startswith("Parser Error: syntax error at or near")
            and "\n" not in parse["message"]
        )
        binder = assert_error(query(c, "SELECT nope FROM readings"), 400, "query")
        assert binder["details"]["duckdb"] == "BinderException" and '"nope"' in binder["message"]
        late = "SELECT CASE WHEN i > 150000 THEN error('late failure') END FROM range(300000) t(i)"
        for fmt in ("csv", "json", "parquet"):
            failed = assert_error(query(c, late, fmt), 400, "query")
            assert "late failure" in failed["message"]


ODD_TYPES = {
    "interval": "INTERVAL 90 MINUTE",
    "list of intervals": "[INTERVAL 1 DAY]",
    "struct": "{'a': 1, 'b': [1, 2]}",
    "map": "map(['k'], [1])",
    "union": "union_value(n := 2)",
    "blob": "'\\xFF'::BLOB",
    "bit": "'101'::BIT",
    "hugeint": "sum(batch)::HUGEINT",
    "infinite date": "'infinity'::DATE",
    "timestamp with time zone": "max(ts)",
}


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
@pytest.mark.parametrize("kind", list(ODD_TYPES))
def test_every_type_answers_in_every_format(world: World, kind: str, fmt: str) -> None:
    with world.analyst() as c:
        answer = query(c, f"SELECT {ODD_TYPES[kind]} AS v, count(*) AS n FROM readings", fmt)
    assert answer.status_code == 200, answer.text
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(answer.content))
        assert table.column("n").to_pylist() == [360]
    elif fmt == "csv":
        assert answer.text.startswith('"v","n"\n') and answer.text.rstrip().endswith(",360")
    else:
        assert answer.json()["rows"][0][1] == 360


def test_timestamps_stay_timestamps_in_parquet(world: World) -> None:
    with world.analyst() as c:
        answer = query(c, "SELECT ts, value, INTERVAL 1 HOUR AS i FROM readings LIMIT 1", "parquet")
    schema = pq.read_table(io.BytesIO(answer.content)).schema
    assert str(schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("value").type) == "double"
    assert str(schema.field("i").type) == "string"  # Parquet has no INTERVAL: DuckDB's text, 01:00:00


# --- limits ---------------------------------------------------------------------------------------------

SLOW = "SELECT sum(i) FROM range(1000000000000000) t(i)"
HUNGRY = "SELECT list(i) FROM range(200000000) t(i)"


def test_a_query_stops_at_its_time_limit_with_a_400(world: World) -> None:
    with world.analyst() as c:
        error = assert_error(query(c, SLOW), 400, "query")
        assert error["details"] == {"timeout_s": TIMEOUT_S} and "time limit" in error["message"]
        done = job_of(c, SLOW)
    assert done["status"] == "failed" and done["error"]["details"] == {"timeout_s": TIMEOUT_S}
    assert 0 < done["duration_s"] < TIMEOUT_S + 10


def test_a_query_stops_at_its_memory_limit_with_a_400(world: World) -> None:
    with world.analyst() as c:
        error = assert_error(query(c, HUNGRY), 400, "query")
        assert error["details"]["memory_limit"] == MEMORY_LIMIT
        assert "query.memory_limit" in error["message"]
        done = job_of(c, HUNGRY)
        assert done["status"] == "failed" and done["error"]["details"]["memory_limit"] == MEMORY_LIMIT
        assert query(c, "SELECT count(*) FROM readings").json()["rows"] == [[360]]  # the server is fine


def test_a_tenant_with_too_many_jobs_under_way_gets_429(world: World) -> None:
    with world.analyst() as c:
        ids = [c.post("/api/v1/queries", json={"sql": SLOW}).json()["id"] for _ in range(2)]
        try:
            error = assert_error(c.post("/api/v1/queries", json={"sql": "SELECT 1"}), 429, "too_many")
            assert error["details"] == {"max_jobs": 2, "retryable": True}
            with world.server.client(world.acme2.keys["analyst"]) as other:
                assert other.post("/api/v1/queries", json={"sql": "SELECT 1"}).status_code == 202
        finally:
            for job_id in ids:
                c.delete(f"/api/v1/queries/{job_id}")


def test_metrics_count_queries_by_outcome(tmp_path: Path) -> None:
    """On a server of its own: the shared one may still run other tests' query jobs meanwhile."""
    lab = Lab(tmp_path / "data")
    try:
        acme = lab.tenant("acme")
        server = lab.server(IRONWATCH_QUERY__TIMEOUT_S=str(TIMEOUT_S))

        def counted() -> dict[str, float]:
            text = httpx.get(f"{server.url}/metrics").text
            found = re.findall(r'^ironwatch_query_count\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE)
            return {outcome: float(n) for outcome, n in found}

        assert counted() == {"ok": 0, "error": 0, "stopped": 0, "failed": 0}
        with server.client(acme.keys["analyst"]) as c:
            assert query(c, "SELECT count(*) FROM readings").status_code == 200
            assert_error(query(c, "SELECT nope FROM readings"), 400, "query")
            assert_error(query(c, SLOW), 400, "query")
        assert counted() == {"ok": 1, "error": 1, "stopped": 1, "failed": 0}
    finally:
        lab.close()
