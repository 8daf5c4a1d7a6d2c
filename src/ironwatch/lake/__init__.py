"""The data lake: storage roots by URL, the partition layout, Parquet writing, rollups, compaction
and sandboxed SQL."""

from ironwatch.lake import compaction, jobs, query, rebuild, rollup, series
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
