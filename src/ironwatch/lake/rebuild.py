"""Rebuilding rollups from raw readings: every partial recomputed, orphans removed.

Rollups are derived data. ``ironwatch rollups rebuild`` recomputes the partials of every raw file
(of one site, from one time on, if asked) with the same code the flusher and the compactor use, so
a rebuilt lake answers rollup queries exactly as the incrementally kept one did; partial files whose
raw file no longer exists are deleted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pyarrow.parquet as pq

from ironwatch.arrowfile import arrow_file
from ironwatch.lake import journal, rollup
from ironwatch.lake.layout import HOUR_US, hour_us
from ironwatch.lake.root import Root

Progress = Callable[["Report"], None]


@dataclasses.dataclass
class Report:
    """What a rebuild did so far; ``files_total`` is known from the start."""

    files_total: int = 0
    files: int = 0
    readings: int = 0
    partials_written: int = 0
    orphans_deleted: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def left_s(self) -> float | None:
        """Estimated seconds left, by files done so far; ``None`` before the first file."""
        if not self.files:
            return None
        return self.elapsed_s / self.files * (self.files_total - self.files)

    def to_json(self) -> dict[str, float | int]:
        doc = {k: v for k, v in dataclasses.asdict(self).items() if k != "started"}
        return {**doc, "elapsed_s": round(self.elapsed_s, 3)}


def _hour_us(key: tuple[str, str, int, str]) -> int:
    return hour_us(key[1], key[2])


def _in_scope(key: tuple[str, str, int, str], site: str | None, since_us: int | None) -> bool:
    if site is not None and key[0] != site:
        return False
    return since_us is None or _hour_us(key) + HOUR_US > since_us


def rebuild(
    root: Root,
    *,
    site: str | None = None,
    since_us: int | None = None,
    progress: Progress = lambda report: None,
) -> Report:
    """Recompute the partials of every raw file in scope, replacing them, and delete orphans.

    The caller holds the compaction lock, so no compaction switches files meanwhile.
    """
    prefix = f"readings/site={site}" if site else "readings"
    raws = {}
    for path in root.list(prefix):
        key = journal.key_of(path)
        if key is not None and _in_scope(key, site, since_us):
            raws[key] = path
    report = Report(files_total=len(raws))
    for key, path in sorted(raws.items(), key=lambda item: (item[0][1], item[0][2], item[0][0], item[0][3])):
        table = pq.read_table(arrow_file(root.read(path)))
        report.partials_written += rollup.write_partials(
            root, key[0], _hour_us(key), key[3], table, replace=True
        )
        report.files += 1
        report.readings += table.num_rows
        progress(report)
    for kind in ("rollup_1m", "rollup_1h"):
        for path in root.list(f"{kind}/site={site}" if site else kind):
            key = journal.key_of(path)
            if key is not None and _in_scope(key, site, since_us) and key not in raws:
                root.delete(path)
                report.orphans_deleted += 1
    return report
