"""SQL answers in every format and SQL errors with their position, on the sandbox itself.

The HTTP side of the same promises (400, never 500) is in tests/web/test_analyst_sql.py.
"""

from __future__ import annotations

import io
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ironwatch import lake
from ironwatch.errors import QueryError
from ironwatch.lake import Root, open_root, sqlerror

#: One expression of each DuckDB type an analyst may select, including those no format holds as is.
TYPES = {
    "boolean": "true",
    "integer": "42",
    "hugeint": "170141183460469231731687303715884105727::HUGEINT",
    "ubigint": "18446744073709551615::UBIGINT",
    "decimal": "1.25::DECIMAL(5, 2)",
    "double": "'nan'::DOUBLE",
    "varchar": "'x, \"quoted\"'",
    "blob": "'\\xFF\\x00'::BLOB",
    "uuid": "'8f0a5e4c-9a0b-4d3e-9c1f-2b3a4c5d6e7f'::UUID",
    "enum": "'on'::ENUM('on', 'off')",
    "json": "'{\"a\": 1}'::JSON",
    "date": "DATE '2026-11-24'",
    "infinite date": "'infinity'::DATE",
    "time": "TIME '10:00:01'",
    "timestamp": "TIMESTAMP '2026-11-24 10:00:00'",
    "timestamptz": "TIMESTAMPTZ '2026-11-24 10:00:00+00'",
    "infinite timestamptz": "'-infinity'::TIMESTAMPTZ",
    "timestamp_ns": "TIMESTAMP_NS '2026-11-24 10:00:00.123456789'",
    "interval": "INTERVAL 90 MINUTE",
    "list": "[1, 2, 3]",
    "list of intervals": "[INTERVAL 1 DAY]",
    "array": "[1, 2]::INTEGER[2]",
    "struct": "{'a': 1, 'b': 'x'}",
    "struct with an interval": "{'a': INTERVAL 1 DAY}",
    "map": "map(['k'], [1])",
    "union": "union_value(n := 2)",
    "bit": "'101'::BIT",
    "bignum": "12345678901234567890123456789012345678901234567890::BIGNUM",
    "variant": "'x'::VARIANT",
    "null": "NULL",
}


@pytest.fixture
def root() -> Root:
    # An empty root: the views exist (with no rows), and no file is needed for these queries.
    return open_root(f"memory://{uuid.uuid4().hex}")


@pytest.mark.parametrize("fmt", lake.query.FORMATS)
@pytest.mark.parametrize("kind", list(TYPES))
def test_every_type_can_be_answered_in_every_format(root: Root, kind: str, fmt: str) -> None:
    sql = f"SELECT {TYPES[kind]} AS v, 7 AS n"
    table = lake.query.run(root, sql, fmt=fmt)
    data = lake.query.encode(table, fmt)
    if fmt == "csv":
        back = pacsv.read_csv(io.BytesIO(data))
        assert back.column_names == ["v", "n"] and back.num_rows == 1
    elif fmt == "parquet":
        assert pq.read_table(io.BytesIO(data)).num_rows == 1
    else:
        assert data.startswith(b'{"columns":["v","n"]')


def test_types_that_formats_hold_keep_their_arrow_types(root: Root) -> None:
    table = lake.query.run(
        root, "SELECT TIMESTAMPTZ '2026-11-24 10:00:00+00' AS ts, [1, 2] AS l", fmt="parquet"
    )
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_list(table.schema.field("l").type)
    csv = lake.query.run(root, "SELECT INTERVAL 90 MINUTE AS i, [1, 2] AS l, 1 AS a, 2 AS a", fmt="csv")
    assert csv.column_names == ["i", "l", "a", "a"]  # repeated names survive the casts
    assert csv.to_pylist() == [{"i": "01:30:00", "l": "[1, 2]", "a": 2}]  # (to_pylist keeps one "a")


def test_infinite_dates_are_spelled_out_in_json(root: Root) -> None:
    table = lake.query.run(root, "SELECT 'infinity'::DATE AS d, '-infinity'::TIMESTAMPTZ AS t", fmt="json")
    assert lake.query.to_json(table)["rows"] == [["infinity", "-infinity"]]


BAD_SQL = {
    # name: (sql, DuckDB error class, position or None, text in the message)
    "syntax": ("SELEC 1", "ParserException", 0, 'syntax error at or near "SELEC"'),
    "syntax on line 3": ("SELECT 1,\n  2 +\n  FROM readings", "ParserException", 18, "FROM"),
    "tab before the error": ("SELECT 1,\n\t\t'x'::INT", "ConversionException", 15, "INT32"),
    "unknown column": ("SELECT nope FROM readings", "BinderException", None, '"nope" not found'),
    "unknown table": ("SELECT * FROM nowhere", "CatalogException", None, "nowhere does not exist"),
    "conversion": ("SELECT 'abc'::INTEGER", "ConversionException", 12, "Could not convert string 'abc'"),
    "error() after the first batch": (
        "SELECT CASE WHEN i > 150000 THEN error('boom') END FROM range(300000) t(i)",
        "InvalidInputException",
        None,
        "boom",
    ),
}


@pytest.mark.parametrize("name", list(BAD_SQL))
def test_sql_errors_carry_duckdbs_message_and_position(root: Root, name: str) -> None:
    sql, kind, position, text = BAD_SQL[name]
    with pytest.raises(QueryError) as caught:
        lake.query.run(root, sql, max_rows=1_000_000)
    error = caught.value
    assert error.status == 400
    assert error.details["duckdb"] == kind
    assert text in error.message and "\n" not in error.message
    if position is None:
        assert "position" not in error.details
    else:
        assert error.details["position"] == position
        line = sql[:position].count("\n") + 1
        assert error.details["line"] == line
        assert f"(line {line}, column {error.details['column']})" in error.message


def test_a_long_line_is_located_through_duckdbs_shortened_excerpt() -> None:
    sql = "SELECT " + ", ".join(f"{i} AS c{i}" for i in range(60)) + ", 'x'::INT AS bad, 1 AS tail"
    message = (
        "Conversion Error: Could not convert string 'x' to INT32\n\n"
        "LINE 1: ...57 AS c57, 58 AS c58, 59 AS c59, 'x'::INT AS bad, 1 AS tail\n"
        + " " * (8 + 3 + len("57 AS c57, 58 AS c58, 59 AS c59, 'x'"))
        + "^^^^^"
    )
    where = sqlerror.locate(sql, message)
    assert sql[where["position"] :].startswith("::INT AS bad")


def test_time_limit_stops_the_query(root: Root) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError, match=r"longer than 0\.5 s") as caught:
        lake.query.run(root, "SELECT sum(i) FROM range(1000000000000) t(i)", timeout_s=0.5)
    assert caught.value.details == {"timeout_s": 0.5}
    assert time.monotonic() - started < 10


def test_time_limit_also_stops_a_stream_between_batches(root: Root) -> None:
    sql = "SELECT i FROM range(1000000000000) t(i)"
    with lake.query.stream(root, sql, timeout_s=0.5) as answer, pytest.raises(QueryError, match="time limit"):
        for _ in answer:  # the first batches come, then the limit ends the stream
            pass


def test_memory_limit_is_a_400_that_names_the_setting(root: Root) -> None:
    with pytest.raises(QueryError) as caught:
        lake.query.run(root, "SELECT list(i) FROM range(100000000) t(i)", memory_limit="64MB")
    assert "query.memory_limit" in caught.value.message and "64MB" in caught.value.message
    assert "temp_directory" not in caught.value.message  # DuckDB's advice is not for analysts
    assert caught.value.details["memory_limit"] == "64MB"


def test_stop_from_another_thread_cancels(root: Root) -> None:
    with lake.query.stream(root, "SELECT i FROM range(1000000000000) t(i)", timeout_s=60) as answer:
        threading.Timer(0.3, answer.stop).start()
        with pytest.raises(QueryError, match="cancelled") as caught:
            for _ in answer:
                pass
    assert caught.value.details == {"cancelled": True}


def test_more_rows_than_allowed_suggests_a_query_job(root: Root) -> None:
    with pytest.raises(QueryError, match="query job") as caught:
        lake.query.run(root, "SELECT * FROM range(1000)", max_rows=999)
    assert caught.value.details == {"max_rows": 999}
    assert lake.query.run(root, "SELECT * FROM range(1000)", max_rows=1000).num_rows == 1000


def test_a_stop_at_any_moment_of_the_start_ends_the_query(root: Root) -> None:
    """A stop that lands while the query is being prepared, before DuckDB executes it, must not be
    lost (DuckDB forgets an interrupt when a query begins): the query still ends at once."""
    blocker = "SELECT sum(i) FROM range(1000000000000000) t(i)"  # one row, after a very long time
    for delay_s in [0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.03] * 3:
        started = time.monotonic()

        def stop_soon(answer: lake.query.Stream, delay_s: float = delay_s) -> None:
            threading.Timer(delay_s, answer.stop).start()

        with (
            pytest.raises(QueryError, match="cancelled"),
            lake.query.stream(root, blocker, timeout_s=30, on_open=stop_soon) as answer,
        ):
            for _ in answer:
                pass
        assert time.monotonic() - started < 10, f"a stop {delay_s * 1000:g} ms after the open was lost"
