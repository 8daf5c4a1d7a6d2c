"""SQL over one tenant's lake with DuckDB, in a sandbox that sees only that tenant's root.

Each query gets a fresh in-memory DuckDB: the views over the tenant's files are created first, then
external access is limited to the tenant's own directories and the configuration is locked, so the
analyst's SQL can neither read other files nor widen its own access.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ironwatch.errors import InvalidInput, QueryError
from ironwatch.lake import views
from ironwatch.lake.root import Root

FORMATS = ("csv", "json", "parquet")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(
    root: Root,
    *,
    memory_limit: str = "512MB",
    threads: int = 2,
    tables: Mapping[str, pa.Table] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A sandboxed DuckDB connection with the tenant's views; nothing outside ``root`` is reachable.

    ``tables`` adds in-memory views (such as ``sensors`` from the metadata database) by name.
    """
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = {_quote(memory_limit)}")
        con.execute(f"SET threads = {int(threads)}")
        for view in views.LAKE_VIEWS:
            con.execute(f"CREATE VIEW {view.name} AS {views.view_sql(root, view)}")
        for name, table in (tables or {}).items():
            con.register(name, table)
        dirs: list[str] = list(root.duckdb_dirs())
        # DuckDB lets a connection read its temporary directory (by default .tmp in the server's
        # working directory, shared by every tenant's queries), so queries do not spill to disk.
        con.execute("SET temp_directory = ''")
        con.execute(f"SET allowed_directories = [{', '.join(_quote(d) for d in dirs)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        con.close()
        raise QueryError(f"cannot open the tenant's lake: {exc}") from exc
    return con


def run(
    root: Root,
    sql: str,
    *,
    timeout_s: float = 30.0,
    memory_limit: str = "512MB",
    max_rows: int | None = None,
    tables: Mapping[str, pa.Table] | None = None,
) -> pa.Table:
    """Run one read-only SQL statement over the tenant's views and return the result as Arrow."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput("sql", "expected a non-empty SQL statement")
    con = connect(root, memory_limit=memory_limit, tables=tables)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        statements = con.extract_statements(sql)
        if len(statements) != 1:
            raise QueryError(f"expected one SQL statement, got {len(statements)}")
        if statements[0].type not in {duckdb.StatementType.SELECT}:
            raise QueryError(f"only SELECT statements may run, not {statements[0].type.name}")
        result = con.sql(sql)  # a DB-API result warns on Arrow output in DuckDB 2
        if max_rows is None:
            return result.to_arrow_table()
        reader: pa.RecordBatchReader = result.to_arrow_reader(batch_size=min(max_rows + 1, 100_000))
        batches: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows > max_rows:
                raise QueryError(
                    f"the answer has more than {max_rows} rows; add a LIMIT or use a query job",
                    {"max_rows": max_rows},
                )
        return pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException as exc:
        raise QueryError(
            f"query ran longer than {timeout_s:g} s and was stopped", {"timeout_s": timeout_s}
        ) from exc
    except duckdb.Error as exc:
        raise QueryError(str(exc).strip(), {"duckdb": type(exc).__name__}) from exc
    finally:
        timer.cancel()
        con.close()


def encode(table: pa.Table, fmt: str) -> bytes:
    """Serialise a query result as ``csv``, ``json`` (columns and rows) or ``parquet``."""
    if fmt == "csv":
        sink = io.BytesIO()
        pacsv.write_csv(table, sink)
        return sink.getvalue()
    if fmt == "json":
        return orjson.dumps(
            to_json(table), default=_json_value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC
        )
    if fmt == "parquet":
        out = pa.BufferOutputStream()
        pq.write_table(table, out, compression="zstd")
        return bytes(out.getvalue())
    raise InvalidInput("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")


def _json_value(value: Any) -> Any:
    """JSON for what orjson cannot write: DECIMAL and HUGEINT (``sum`` of integers), BLOB, INTERVAL."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value() and -(2**63) <= value < 2**63:
            return int(value)
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def to_json(table: pa.Table) -> dict[str, Any]:
    """``{"columns": [...], "types": [...], "rows": [[...], ...], "row_count": n}``."""
    columns = [c.to_pylist() for c in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    return {
        "columns": table.column_names,
        "types": [str(t) for t in table.schema.types],
        "rows": rows,
        "row_count": table.num_rows,
    }
