"""SQL over one tenant's lake with DuckDB, in a sandbox that sees only that tenant's root.

Each query runs in a sandboxed in-memory DuckDB (:mod:`ironwatch.lake.sandbox`) lent by a
:class:`~ironwatch.lake.pool.Pool`: external access is limited to the tenant's own directories and
the configuration is locked, so the analyst's SQL can neither read other files nor widen its own
access; the views over the tenant's files are set up for each query over the files visible then.
The server, query jobs, ``ironwatch query`` and ``ironwatch bench query`` pass their pool; without
one a query gets a new DuckDB, closed after.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ironwatch.errors import InvalidInput, QueryError
from ironwatch.lake import portable, sqlerror
from ironwatch.lake.pool import Pool
from ironwatch.lake.root import Root
from ironwatch.lake.sandbox import connect

FORMATS = ("csv", "json", "parquet")
#: How often a stopped or timed-out query is interrupted again until its stream ends.
INTERRUPT_REPEAT_S = 0.05
__all__ = ["FORMATS", "Pool", "Stream", "connect", "encode", "run", "stream", "to_json"]


class Stream:
    """A running query's answer as Arrow record batches, with DuckDB's errors translated.

    :func:`stream` makes one. Iterating yields the batches; :meth:`stop` (from any thread) ends the
    query, and the iteration then raises a :class:`QueryError` that says so.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float, memory_limit: str) -> None:
        self._con = con
        self.sql = sql
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self.schema = pa.schema([])
        self.is_timed_out = False
        self.is_stopped = False
        self._reader: pa.RecordBatchReader | None = None
        # The connection goes back to its pool when the stream ends: a stop that comes later (a
        # cancel racing the end, the timer) must not interrupt the next query it serves.
        self._lock = threading.Lock()
        self._is_open = True
        self._repeater: threading.Thread | None = None

    def stop(self) -> None:
        """Stop the query (a cancel); safe to call from another thread, more than once, and after
        the query ended (then it does nothing)."""
        with self._lock:
            self.is_stopped = True
            self._interrupt()

    def _time_out(self) -> None:
        with self._lock:
            self.is_timed_out = True
            self._interrupt()

    def _interrupt(self) -> None:
        # Called with the lock held. DuckDB forgets an interrupt when a query begins, so one that
        # lands while the query is being prepared would be lost and the query would run on to its
        # time limit: repeat it until the stream ends.
        if not self._is_open:
            return
        self._con.interrupt()
        if self._repeater is None:
            self._repeater = threading.Thread(target=self._repeat_interrupt, name="query-stop", daemon=True)
            self._repeater.start()

    def _repeat_interrupt(self) -> None:
        while True:
            time.sleep(INTERRUPT_REPEAT_S)
            with self._lock:
                if not self._is_open:
                    return
                self._con.interrupt()

    def _end(self) -> None:
        """Let go of the connection: no interrupt reaches it from now on, and the answer is released."""
        with self._lock:
            self._is_open = False
        if self._reader is not None:
            self._reader.close()  # DuckDB's pending result, before the connection serves another query

    def _start(self, fmt: str | None, batch_rows: int) -> None:
        try:
            self._check()
            statements = self._con.extract_statements(self.sql)
            if len(statements) != 1:
                raise QueryError(f"expected one SQL statement, got {len(statements)}")
            if statements[0].type not in {duckdb.StatementType.SELECT}:
                raise QueryError(f"only SELECT statements may run, not {statements[0].type.name}")
            relation = self._con.sql(self.sql)  # a DB-API result warns on Arrow output in DuckDB 2
            if fmt is not None:
                relation = portable.project(relation, fmt)
            self._reader = relation.to_arrow_reader(batch_size=batch_rows)
            self.schema = self._reader.schema
            self._check()
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            raise self._error(exc) from exc

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        assert self._reader is not None, "a Stream is made by stream()"
        try:
            for batch in self._reader:
                self._check()
                yield batch
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            raise self._error(exc) from exc

    def _check(self) -> None:
        # An interrupt that comes while DuckDB is between two steps would be lost: check by hand too.
        if self.is_stopped or self.is_timed_out:
            raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")

    def _error(self, exc: BaseException) -> QueryError:
        # An interrupt comes as InterruptException, or through the Arrow stream as an OSError.
        if self.is_stopped:
            return QueryError("the query was cancelled", {"cancelled": True})
        if self.is_timed_out:
            return QueryError(
                f"query ran longer than {self.timeout_s:g} s and was stopped (query time limit)",
                {"timeout_s": self.timeout_s},
            )
        return sqlerror.translate(exc, self.sql, memory_limit=self.memory_limit)

    def bytes_scanned(self) -> int | None:
        """Bytes DuckDB read from storage for this query (its profile's ``io.total_bytes_read``).

        Known only after the last batch and before the stream's block ends, and only for a stream
        opened with ``is_profiled``.
        """
        if not self._is_open:
            return None
        try:
            profile = orjson.loads(self._con.get_profiling_information(format="json"))
            return int(profile["io"]["total_bytes_read"])
        except (duckdb.Error, AttributeError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            return None


@contextmanager
def stream(
    root: Root,
    sql: str,
    *,
    timeout_s: float = 30.0,
    memory_limit: str = "512MB",
    tables: Mapping[str, pa.Table] | None = None,
    fmt: str | None = None,
    batch_rows: int = 100_000,
    is_profiled: bool = False,
    on_open: Callable[[Stream], None] | None = None,
    pool: Pool | None = None,
) -> Iterator[Stream]:
    """Run one read-only SQL statement over the tenant's views, yielding its answer as a :class:`Stream`.

    With ``fmt``, columns that format cannot hold come out as text (see :mod:`portable`). The time
    limit covers the whole iteration; the sandbox goes back to ``pool`` (or, without one, is
    closed) when the block ends. ``on_open`` gets the stream before the query starts, so that
    another thread can stop it even while DuckDB works on the first batch.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput("sql", "expected a non-empty SQL statement")
    lender = pool if pool is not None else Pool(idle=0)
    with lender.lease(root, sql, memory_limit=memory_limit, tables=tables, is_profiled=is_profiled) as lease:
        answer = Stream(lease.sandbox.con, sql, timeout_s, memory_limit)
        timer = threading.Timer(timeout_s, answer._time_out)
        timer.daemon = True
        timer.start()
        try:
            if on_open is not None:
                on_open(answer)
            answer._start(fmt, batch_rows)
            yield answer
        finally:
            timer.cancel()
            answer._end()
            # An interrupted DuckDB is closed rather than lent again (see ironwatch.lake.pool).
            lease.is_spoiled = answer.is_stopped or answer.is_timed_out


def run(
    root: Root,
    sql: str,
    *,
    timeout_s: float = 30.0,
    memory_limit: str = "512MB",
    max_rows: int | None = None,
    tables: Mapping[str, pa.Table] | None = None,
    fmt: str | None = None,
    pool: Pool | None = None,
) -> pa.Table:
    """Run one read-only SQL statement over the tenant's views and return the result as Arrow.

    ``max_rows`` refuses larger answers (a :class:`QueryError` that suggests a query job); ``fmt``
    casts the columns that format cannot hold to text; ``pool`` lends the sandbox (see
    :func:`stream`).
    """
    batch_rows = min(max_rows + 1, 100_000) if max_rows is not None else 100_000
    with stream(
        root,
        sql,
        timeout_s=timeout_s,
        memory_limit=memory_limit,
        tables=tables,
        fmt=fmt,
        batch_rows=batch_rows,
        pool=pool,
    ) as answer:
        batches: list[pa.RecordBatch] = []
        rows = 0
        for batch in answer:
            batches.append(batch)
            rows += batch.num_rows
            if max_rows is not None and rows > max_rows:
                raise QueryError(
                    f"the answer has more than {max_rows} rows; add a LIMIT or use a query job",
                    {"max_rows": max_rows},
                )
        return pa.Table.from_batches(batches, schema=answer.schema)


def encode(table: pa.Table, fmt: str) -> bytes:
    """Serialise a query result as ``csv``, ``json`` (columns and rows) or ``parquet``.

    Run the query with the same ``fmt`` so that every column can be written; a column that still
    cannot is a :class:`QueryError` (400) that names it, never a server error.
    """
    if fmt not in FORMATS:
        raise InvalidInput("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        if fmt == "csv":
            sink = io.BytesIO()
            pacsv.write_csv(table, sink)
            return sink.getvalue()
        if fmt == "json":
            return orjson.dumps(
                to_json(table), default=_json_value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC
            )
        out = pa.BufferOutputStream()
        pq.write_table(table, out, compression="zstd")
        return bytes(out.getvalue())
    except (pa.ArrowException, orjson.JSONEncodeError) as exc:
        types = ", ".join(f"{f.name} {f.type}" for f in table.schema)
        raise QueryError(f"the answer cannot be written as {fmt} ({types}): {exc}", {"format": fmt}) from exc


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
    columns = [_pylist(c) for c in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    return {
        "columns": table.column_names,
        "types": [str(t) for t in table.schema.types],
        "rows": rows,
        "row_count": table.num_rows,
    }


def _pylist(column: pa.ChunkedArray) -> list[Any]:
    """Python values of a column; DuckDB's infinite dates and timestamps, which Python cannot hold,
    become ``"infinity"`` and ``"-infinity"``."""
    try:
        return list(column.to_pylist())
    except (OverflowError, ValueError):
        values: list[Any] = []
        for scalar in column:
            try:
                values.append(scalar.as_py())
            except (OverflowError, ValueError):
                storage = pa.int32() if pa.types.is_date32(scalar.type) else pa.int64()
                raw = scalar.cast(storage).as_py() if scalar.is_valid else None
                values.append("infinity" if raw is not None and raw > 0 else "-infinity")
        return values
