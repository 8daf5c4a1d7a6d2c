"""The data lake: storage roots by URL, the partition layout, Parquet writing and sandboxed SQL."""

from ironwatch.lake import jobs, query, series
from ironwatch.lake.layout import (
    quarantine_path,
    readings_path,
    write_quarantine,
    write_readings,
)
from ironwatch.lake.root import LocalRoot, MemoryRoot, Root, open_root

__all__ = [
    "LocalRoot",
    "MemoryRoot",
    "Root",
    "jobs",
    "open_root",
    "quarantine_path",
    "query",
    "readings_path",
    "series",
    "write_quarantine",
    "write_readings",
]
