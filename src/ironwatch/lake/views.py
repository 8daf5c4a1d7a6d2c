"""The SQL views over a tenant's files: one entry per folder of the lake layout.

Each view reads its folder's Parquet files with Hive partitioning; a folder with no files yet gets
an empty view of the same columns, so analysts' SQL works on a new tenant too.
"""

from __future__ import annotations

import dataclasses

from ironwatch.lake.root import Root


@dataclasses.dataclass(frozen=True)
class LakeView:
    """A view named ``name`` over ``prefix/**/*.parquet``; ``empty`` is its SQL when there are no files."""

    name: str
    prefix: str
    hive_types: str
    empty: str


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

#: Every view created in each query's sandbox, in order.
LAKE_VIEWS: tuple[LakeView, ...] = (READINGS, QUARANTINE)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(root: Root, view: LakeView) -> str:
    """The SELECT behind ``view`` for this root."""
    if not root.list(view.prefix):
        return view.empty
    glob = _quote(root.duckdb_glob(f"{view.prefix}/**/*.parquet"))
    return f"SELECT * FROM read_parquet({glob}, hive_partitioning = true, hive_types = {view.hive_types})"
