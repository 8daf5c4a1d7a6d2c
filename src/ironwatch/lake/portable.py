"""Result columns that an answer format cannot hold, turned into text by DuckDB before they leave it.

pyarrow's CSV writer takes no nested, INTERVAL or binary columns, Parquet has no INTERVAL or UNION,
and JSON needs Python values: such columns are cast to VARCHAR inside the query, so they come out
in DuckDB's own spelling (``01:30:00``, ``[1, 2]``, ``{'a': 1}``, ``\\xFF``) instead of ending the
answer with an error. Columns of the other types are left alone, so the common answer keeps its
Arrow types (timestamps stay timestamps in Parquet).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import duckdb

#: DuckDB type ids that every format writes as they are.
SCALARS = frozenset(
    {
        "boolean",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "hugeint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "uhugeint",
        "float",
        "double",
        "decimal",
        "varchar",
        "date",
        "time",
        "time_ns",
        "timestamp",
        "timestamp_s",
        "timestamp_ms",
        "timestamp_ns",
        "timestamp with time zone",
        "uuid",
        "enum",
        "null",
    }
)
_NESTED = frozenset({"list", "array", "struct", "map"})


def _child_types(kind: Any) -> Iterable[Any]:
    # An ARRAY's children are its element type and its size (an int); only types are of interest.
    for _name, child in kind.children:
        if hasattr(child, "id"):
            yield child


def is_portable(kind: Any, fmt: str) -> bool:
    """Whether a column of DuckDB type ``kind`` can be written as ``fmt`` without a cast."""
    if kind.id in SCALARS:
        return True
    if fmt == "csv":
        return False
    if kind.id == "blob":
        return True
    return kind.id in _NESTED and all(is_portable(child, fmt) for child in _child_types(kind))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def project(relation: duckdb.DuckDBPyRelation, fmt: str) -> duckdb.DuckDBPyRelation:
    """``relation`` with every column ``fmt`` cannot hold cast to VARCHAR; itself when none needs it."""
    kinds = list(relation.types)
    if all(is_portable(k, fmt) for k in kinds):
        return relation
    # Columns are taken by position (#n), as names may repeat in an analyst's SELECT.
    exprs = [
        f"#{i}" if is_portable(k, fmt) else f"CAST(#{i} AS VARCHAR)" for i, k in enumerate(kinds, start=1)
    ]
    names = ", ".join(f"{expr} AS {_ident(name)}" for expr, name in zip(exprs, relation.columns, strict=True))
    return relation.project(names)
