"""The SQL views over a tenant's files: one entry per folder of the lake layout.

Each view reads its folder's Parquet files with Hive partitioning; a folder with no files yet gets
an empty view of the same columns, so analysts' SQL works on a new tenant too. The files are named
one by one (not globbed), as :func:`ironwatch.lake.journal.visible_files` lists them: a compaction
then switches every view from an hour's old files to its new one at once. Code that reads lake
folders itself must list them through that function too.

``rollup_1m`` and ``rollup_1h`` merge the partial aggregates kept per raw file (lake/rollup.py) at
query time, one row per site, sensor, metric and minute (hour):

==========  ===========  ====================================================================
column      type         meaning
==========  ===========  ====================================================================
site        VARCHAR      partition; filter on it (and on date) to read fewer files
month       VARCHAR      ``YYYY-MM``, partition of ``rollup_1h`` only
date        DATE         partition: the UTC day of the minute (hour)
sensor      VARCHAR
metric      VARCHAR
minute      TIMESTAMPTZ  start of the minute (``rollup_1m``); ``hour`` in ``rollup_1h``
count       BIGINT       readings in the bucket
mean        DOUBLE
min, max    DOUBLE
last        DOUBLE       the value of the latest reading (the largest if several share its ts)
std         DOUBLE       sample standard deviation; NULL when count is 1
first_ts    TIMESTAMPTZ  time of the first reading in the bucket
last_ts     TIMESTAMPTZ  time of the latest reading in the bucket
==========  ===========  ====================================================================

Sums are compensated (``fsum``), so the same files give the same answer to the last bit whatever
the order DuckDB's threads merge them in. ``std`` is exact where a bucket has one partial (every
closed hour after compaction); before, it merges sums of squares and loses precision on series
whose mean is very large against their spread.
"""

from __future__ import annotations

import dataclasses
import re

from ironwatch.lake.journal import visible_files
from ironwatch.lake.root import Root


@dataclasses.dataclass(frozen=True)
class LakeView:
    """A view named ``name`` over the Parquet files under ``prefix``.

    ``empty`` is its SQL when there are no files; ``select`` its SQL over ``{source}``, the files.
    """

    name: str
    prefix: str
    hive_types: str
    empty: str
    select: str = "SELECT * FROM {source}"


READINGS = LakeView(
    "readings",
    "readings",
    "{'site': VARCHAR, 'date': DATE, 'hour': INTEGER}",
    "SELECT NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS sensor, NULL::VARCHAR AS metric, "
    "NULL::DOUBLE AS value, NULL::VARCHAR AS gateway, NULL::BIGINT AS batch, "
    "NULL::TIMESTAMPTZ AS received_at, "
    "NULL::VARCHAR AS site, NULL::DATE AS date, NULL::INTEGER AS hour WHERE false",
)

QUARANTINE = LakeView(
    "quarantine",
    "quarantine",
    "{'date': DATE}",
    "SELECT NULL::TIMESTAMPTZ AS received_at, NULL::VARCHAR AS transport, NULL::VARCHAR AS gateway, "
    "NULL::VARCHAR AS site, NULL::BIGINT AS batch, NULL::BIGINT AS index, NULL::VARCHAR AS field, "
    "NULL::VARCHAR AS reason, NULL::VARCHAR AS ts, NULL::VARCHAR AS sensor, NULL::VARCHAR AS metric, "
    "NULL::DOUBLE AS value, NULL::VARCHAR AS raw, NULL::DATE AS date WHERE false",
)


def _rollup_select(bucket: str, partitions: str) -> str:
    keys = f"{partitions}, sensor, metric, bucket"
    return (
        f"SELECT {partitions}, sensor, metric, bucket AS {bucket}, sum(count)::BIGINT AS count, "
        "fsum(sum) / sum(count) AS mean, min(min) AS min, max(max) AS max, "
        "arg_max(last, (last_ts, last)) AS last, "
        # Between-partial spread in its own brackets: zero exactly when a bucket has one partial.
        "CASE WHEN sum(count) > 1 THEN sqrt(greatest(0, fsum(m2) + "
        "(fsum(sum * sum / count) - fsum(sum) * fsum(sum) / sum(count))) / (sum(count) - 1)) END AS std, "
        f"min(first_ts) AS first_ts, max(last_ts) AS last_ts FROM {{source}} GROUP BY {keys}"
    )


def _rollup_empty(bucket: str, partitions: str) -> str:
    return (
        f"SELECT {partitions}, NULL::VARCHAR AS sensor, NULL::VARCHAR AS metric, "
        f"NULL::TIMESTAMPTZ AS {bucket}, NULL::BIGINT AS count, NULL::DOUBLE AS mean, NULL::DOUBLE AS min, "
        "NULL::DOUBLE AS max, NULL::DOUBLE AS last, NULL::DOUBLE AS std, NULL::TIMESTAMPTZ AS first_ts, "
        "NULL::TIMESTAMPTZ AS last_ts WHERE false"
    )


ROLLUP_1M = LakeView(
    "rollup_1m",
    "rollup_1m",
    "{'site': VARCHAR, 'date': DATE, 'hour': INTEGER}",
    _rollup_empty("minute", "NULL::VARCHAR AS site, NULL::DATE AS date"),
    _rollup_select("minute", "site, date"),
)

ROLLUP_1H = LakeView(
    "rollup_1h",
    "rollup_1h",
    "{'site': VARCHAR, 'month': VARCHAR, 'date': DATE, 'hour': INTEGER}",
    _rollup_empty("hour", "NULL::VARCHAR AS site, NULL::VARCHAR AS month, NULL::DATE AS date"),
    _rollup_select("hour", "site, month, date"),
)

#: Every view created in each query's sandbox, in order.
LAKE_VIEWS: tuple[LakeView, ...] = (READINGS, QUARANTINE, ROLLUP_1M, ROLLUP_1H)


#: Words in SQL that look at the catalog (``SHOW TABLES``, ``information_schema``): every view is needed.
_CATALOG = re.compile(r"information_schema|duckdb_|pg_|sqlite_|\bshow\b|\bpragma\b|table_info")


def needed(sql: str | None) -> tuple[LakeView, ...]:
    """The views a statement can use: those it names, or all if it looks at the catalog (or is unknown).

    Setting a view up lists its folder and binds its files, a few milliseconds each; a query of one
    view should not pay for the others. A word that starts like a view's name (``reading``) sets it
    up too, so that DuckDB's "did you mean readings?" still helps with typing errors.
    """
    if sql is None:
        return LAKE_VIEWS
    text = sql.lower()
    if _CATALOG.search(text):
        return LAKE_VIEWS
    return tuple(v for v in LAKE_VIEWS if re.search(rf"\b{v.name[:5]}", text))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(root: Root, view: LakeView) -> str:
    """The SELECT behind ``view`` for this root, over the files visible now."""
    files = visible_files(root, view.prefix)
    if not files:
        return view.empty
    names = ", ".join(_quote(root.duckdb_glob(f)) for f in files)
    source = f"read_parquet([{names}], hive_partitioning = true, hive_types = {view.hive_types})"
    return view.select.format(source=source)
