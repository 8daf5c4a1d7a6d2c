"""One series from the lake: a site's sensor and metric over a time range, raw or rolled up.

Only the partitions that can hold the range are touched. Raw files are found by listing exactly the
``readings/site=S/date=D/hour=H/`` folders of the range (never the whole lake), and DuckDB reads
those files with the sensor, metric and time filters pushed into the Parquet scan, so row groups
of other sensors are skipped by their statistics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironwatch.errors import NotFound, QueryError, StorageError
from ironwatch.lake import journal
from ironwatch.lake.root import Root

log = logging.getLogger(__name__)

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US

#: Raw points: epoch microseconds and values.
POINTS_SCHEMA = pa.schema([("ts", pa.int64()), ("value", pa.float64())])
#: Buckets: start in epoch microseconds, count, mean, min, max.
BUCKETS_SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
    ]
)


def _hours(start_us: int, end_us: int) -> Iterator[datetime]:
    hour = start_us // HOUR_US * HOUR_US
    while hour < end_us:
        yield datetime.fromtimestamp(hour / 1_000_000, UTC)
        hour += HOUR_US


_IN_RANGE = "{column} >= make_timestamp($start)::TIMESTAMPTZ AND {column} < make_timestamp($end)::TIMESTAMPTZ"

#: Where each kind of file of a site lives, and the folder level listed for a range: hours for raw
#: readings (a raw range is at most a day, and fresh series read only the newest hour), days for
#: rollups, so that long ranges take few listings.
FOLDERS = {
    "readings": "readings/site={site}/date={hour:%Y-%m-%d}/hour={hour:%H}",
    "rollup_1m": "rollup_1m/site={site}/date={hour:%Y-%m-%d}",
    "rollup_1h": "rollup_1h/site={site}/month={hour:%Y-%m}/date={hour:%Y-%m-%d}",
}


def files(root: Root, kind: str, site: str, start_us: int, end_us: int) -> list[str]:
    """Parquet files of ``kind`` (a key of :data:`FOLDERS`) of ``site`` in hours overlapping the range.

    Only the partition folders of the range are listed, never the whole lake; a file whose path
    names a date and hour outside the range is left out. The folders are listed as
    :func:`ironwatch.lake.journal.visible_files` lists one, between two snapshots of the compaction
    journal, so a compaction switches the answer from an hour's old files to its new one at once;
    one pair of snapshots serves every folder of the range.
    """
    hours = list(_hours(start_us, end_us))
    wanted = {(f"{h:%Y-%m-%d}", f"{h:%H}") for h in hours}
    folders = list(dict.fromkeys(FOLDERS[kind].format(site=site, hour=h) for h in hours))
    for _ in range(journal.SNAPSHOT_ATTEMPTS):
        before = journal.snapshot(root)
        found = [p for folder in folders for p in root.list(folder) if p.endswith(".parquet")]
        after = journal.snapshot(root)
        if before.names != after.names:
            continue
        try:
            hide = journal.hidden(root, after) if after.states else set()
        except NotFound:
            continue  # an entry moved on to its next state since the listing
        return [p for p in found if _in_hours(p, wanted) and journal.key_of(p) not in hide]
    raise StorageError(f"the compaction journal of {root.url} kept changing while listing {kind} of {site}")


def _in_hours(path: str, wanted: set[tuple[str, str]]) -> bool:
    parts = dict(p.split("=", 1) for p in path.split("/")[:-1] if "=" in p)
    return "date" not in parts or "hour" not in parts or (parts["date"], parts["hour"]) in wanted


class Reader:
    """Reads series from any root through one in-process DuckDB, shared by every request.

    Opening a DuckDB takes ~20 ms, a cursor on an open one microseconds; only SQL written here runs
    on it (never an analyst's), with the root's own file paths and bound parameters.
    """

    def __init__(self, *, threads: int = 2, memory_limit: str = "256MB") -> None:
        self.threads = threads
        self.memory_limit = memory_limit
        self._db: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._db is None:
                db = duckdb.connect(":memory:")
                db.execute("SET TimeZone = 'UTC'")
                db.execute(f"SET threads = {int(self.threads)}")
                db.execute(f"SET memory_limit = '{self.memory_limit.replace(chr(39), '')}'")
                db.execute("SET temp_directory = ''")
                self._db = db
            return self._db.cursor()

    def close(self) -> None:
        """Close the shared DuckDB (a later read opens it again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _read(
        self, root: Root, what: str, list_files: Callable[[], list[str]], sql: str, params: dict[str, object]
    ) -> pa.Table | None:
        """Run ``sql`` over the files ``list_files()`` names (``$files``); ``None`` when there are none."""
        # Compaction may retire a file between listing and reading it: list again once.
        for attempt in (1, 2):
            files = list_files()
            if not files:
                return None
            cursor = self._cursor()
            try:
                params["files"] = [root.duckdb_glob(f) for f in files]
                return cursor.sql(sql, params=params).to_arrow_table()
            except duckdb.IOException as exc:
                if attempt == 2:
                    raise QueryError(f"cannot read {what}: {exc}") from exc
                log.info("series: a file went away while reading %s (%s); listing again", what, exc)
            except duckdb.Error as exc:
                raise QueryError(f"cannot read {what}: {exc}") from exc
            finally:
                cursor.close()
        return None

    def raw(
        self,
        root: Root,
        site: str,
        sensor: str,
        metric: str,
        start_us: int,
        end_us: int,
        *,
        limit: int | None = None,
    ) -> pa.Table:
        """Raw readings of one sensor and metric with ``start_us <= ts < end_us`` (``POINTS_SCHEMA``).

        With ``limit``, at most that many rows, in no particular order (a caller that gets ``limit``
        rows knows there may be more); without, sorted by ``ts``.
        """
        sql = (
            "SELECT epoch_us(ts) AS ts, value FROM read_parquet($files, hive_partitioning = false) "
            f"WHERE sensor = $sensor AND metric = $metric AND {_IN_RANGE.format(column='ts')}"
        )
        params: dict[str, object] = {"sensor": sensor, "metric": metric, "start": start_us, "end": end_us}
        if limit is not None:
            sql += " LIMIT $limit"
            params["limit"] = limit
        table = self._read(
            root,
            f"raw readings of site {site}",
            lambda: files(root, "readings", site, start_us, end_us),
            sql,
            params,
        )
        if table is None:
            return POINTS_SCHEMA.empty_table()
        table = table.cast(POINTS_SCHEMA)
        return table if limit is not None else table.sort_by("ts")

    def rollup(
        self, root: Root, width: str, site: str, sensor: str, metric: str, start_us: int, end_us: int
    ) -> pa.Table:
        """Buckets of ``width`` (``1m`` or ``1h``) starting in ``[start_us, end_us)``, from the rollups.

        Rollups are partial aggregates, several per bucket (one per raw file: late readings add
        partials); they are merged here as the ``rollup_1m`` and ``rollup_1h`` views merge them.
        """
        sql = (
            "SELECT epoch_us(bucket) AS ts, sum(count)::BIGINT AS count, fsum(sum) / sum(count) AS mean, "
            "min(min) AS min, max(max) AS max FROM read_parquet($files, hive_partitioning = false) "
            f"WHERE sensor = $sensor AND metric = $metric AND {_IN_RANGE.format(column='bucket')} "
            "GROUP BY bucket ORDER BY bucket"
        )
        kind = f"rollup_{width}"
        params: dict[str, object] = {"sensor": sensor, "metric": metric, "start": start_us, "end": end_us}
        table = self._read(
            root, f"{kind} of site {site}", lambda: files(root, kind, site, start_us, end_us), sql, params
        )
        return (
            BUCKETS_SCHEMA.empty_table()
            if table is None
            else table.select(BUCKETS_SCHEMA.names).cast(BUCKETS_SCHEMA)
        )


def bucket(points: pa.Table, width_us: int) -> pa.Table:
    """Points (``POINTS_SCHEMA``) aggregated into buckets of ``width_us`` (``BUCKETS_SCHEMA``), by start."""
    if points.num_rows == 0:
        return BUCKETS_SCHEMA.empty_table()
    start = pc.multiply(pc.divide(points["ts"], width_us), width_us)
    grouped = (
        pa.table({"ts": start, "value": points["value"]})
        .group_by("ts", use_threads=False)
        .aggregate([("value", "count"), ("value", "mean"), ("value", "min"), ("value", "max")])
        .rename_columns(
            {"value_count": "count", "value_mean": "mean", "value_min": "min", "value_max": "max"}
        )
    )
    return grouped.select(BUCKETS_SCHEMA.names).cast(BUCKETS_SCHEMA).sort_by("ts")


def combine(buckets: pa.Table, width_us: int) -> pa.Table:
    """Buckets (``BUCKETS_SCHEMA``) merged into wider buckets of ``width_us``, weighting means by count."""
    if buckets.num_rows == 0:
        return BUCKETS_SCHEMA.empty_table()
    start = pc.multiply(pc.divide(buckets["ts"], width_us), width_us)
    count = buckets["count"]
    weighted = pc.multiply(buckets["mean"], count.cast(pa.float64()))
    grouped = (
        pa.table({"ts": start, "count": count, "sum": weighted, "min": buckets["min"], "max": buckets["max"]})
        .group_by("ts", use_threads=False)
        .aggregate([("count", "sum"), ("sum", "sum"), ("min", "min"), ("max", "max")])
    )
    total = grouped["count_sum"]
    mean = pc.divide(grouped["sum_sum"], total.cast(pa.float64()))
    return pa.table(
        [grouped["ts"], total, mean, grouped["min_min"], grouped["max_max"]], schema=BUCKETS_SCHEMA
    ).sort_by("ts")


def as_buckets(points: pa.Table) -> pa.Table:
    """Raw points as one-reading buckets: mean = min = max = value, count = 1."""
    value = points["value"]
    ones = pa.array(np.ones(points.num_rows, dtype=np.int64))
    return pa.table([points["ts"], ones, value, value, value], schema=BUCKETS_SCHEMA)
