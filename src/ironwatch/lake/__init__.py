"""The data lake: storage roots by URL, the partition layout, Parquet writing, rollups, compaction
and sandboxed SQL.

Names are imported on first use (:mod:`ironwatch.lazy`): the lake writer process needs the Parquet
writer, not DuckDB.
"""

from typing import TYPE_CHECKING

from ironwatch.lazy import exports

if TYPE_CHECKING:
    from ironwatch.lake import compaction, jobs, pool, query, rebuild, rollup, series
    from ironwatch.lake.compactor import Compactor
    from ironwatch.lake.journal import visible_files
    from ironwatch.lake.layout import (
        quarantine_path,
        readings_path,
        write_quarantine,
        write_readings,
    )
    from ironwatch.lake.pool import Pool
    from ironwatch.lake.root import LocalRoot, MemoryRoot, Root, open_root

__all__ = [
    "Compactor",
    "LocalRoot",
    "MemoryRoot",
    "Pool",
    "Root",
    "compaction",
    "jobs",
    "open_root",
    "pool",
    "quarantine_path",
    "query",
    "readings_path",
    "rebuild",
    "rollup",
    "series",
    "visible_files",
    "write_quarantine",
    "write_readings",
]

__getattr__ = exports(
    __name__,
    {
        **{name: name for name in ("compaction", "jobs", "pool", "query", "rebuild", "rollup", "series")},
        "Compactor": "compactor",
        "visible_files": "journal",
        **{
            name: "layout"
            for name in ("quarantine_path", "readings_path", "write_quarantine", "write_readings")
        },
        "Pool": "pool",
        **{name: "root" for name in ("LocalRoot", "MemoryRoot", "Root", "open_root")},
    },
)
