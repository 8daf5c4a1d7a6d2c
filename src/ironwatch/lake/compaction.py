"""Compaction of closed hours: all raw files of a site-hour become one, and readers switch at once.

An hour is closed ``close_after_s`` after it ended. Compacting it:

1. journal entry ``pending`` naming the old files and the new one (readers ignore the new name);
2. the old files are read (and checksummed), sorted into one sequence in bounded memory, and written
   as ``c-{id}.parquet`` (lake/compacted.py) with its rollup partials computed on the way;
3. the new file is read back from storage and must hold the same row count and checksum;
4. its partials are written, then the entry becomes ``committed``: readers now see the new file
   and no longer the old ones;
5. after ``grace_s`` (so that a query that listed the old files before the commit can finish
   reading them) the old files move to ``retired/{id}/`` and their partials are deleted, and the
   entry becomes ``retired``; ``retention_s`` later the retired files and the entry are deleted.

A crash at any step leaves the journal saying which side is visible; :func:`tidy` (run before every
compaction pass) rolls a pending entry back and a committed one forward. Raw readings are never
rewritten or deleted by anything else.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ironwatch.arrowfile import arrow_file
from ironwatch.errors import IronwatchError
from ironwatch.lake import journal, rollup
from ironwatch.lake.checksum import Checksum
from ironwatch.lake.compacted import PREFIX, Writer, is_compacted
from ironwatch.lake.journal import Entry
from ironwatch.lake.layout import HOUR_US, hour_us
from ironwatch.lake.root import Root
from ironwatch.lake.spill import Spill

log = logging.getLogger(__name__)

#: The named steps of a compaction, in order; a pause hook can stop at each (for crash tests).
STEPS = ("pending", "written", "verified", "partials", "committed", "retiring", "retired")

Pause = Callable[[str], None]
Hour = tuple[str, str, int]  # site, date (YYYY-MM-DD), hour


class Interrupted(IronwatchError):
    """The compaction was asked to stop (the server is stopping); it was rolled back."""

    code = "interrupted"
    retryable = True


class VerificationFailed(IronwatchError):
    """The compacted file does not hold exactly the readings of the files it replaces."""

    code = "verification_failed"


@dataclasses.dataclass(frozen=True)
class Policy:
    """How and when to compact; see the ``lake.compaction_*`` settings."""

    close_after_s: float = 7200.0
    grace_s: float = 900.0
    retention_s: float = 7 * 86400.0
    row_group_rows: int = 1 << 20
    compression_level: int = 6
    chunk_rows: int = 500_000

    @classmethod
    def from_settings(cls, lake: Any) -> Policy:
        """The policy of the ``lake`` settings section."""
        return cls(
            close_after_s=float(lake.compact_after_s),
            grace_s=float(lake.compaction_grace_s),
            retention_s=float(lake.retired_keep_s),
            row_group_rows=int(lake.compaction_row_group_rows),
            compression_level=int(lake.compaction_level),
            chunk_rows=int(lake.compaction_chunk_rows),
        )


def no_pause(step: str) -> None:
    """The pause hook that never pauses."""
    return None


def raw_path(site: str, date: str, hour: int, name: str) -> str:
    """The raw file ``name`` of a site-hour."""
    return f"readings/site={site}/date={date}/hour={hour:02d}/{name}.parquet"


def _partial_paths(site: str, date: str, hour: int, name: str) -> tuple[str, str]:
    start = hour_us(date, hour)
    return rollup.rollup_1m_path(site, start, name), rollup.rollup_1h_path(site, start, name)


def hours_to_compact(
    root: Root, now_us: int, policy: Policy, site: str | None = None
) -> dict[Hour, list[str]]:
    """Closed site-hours with more than one raw file, or one not compacted, oldest first; their files."""
    names: dict[Hour, list[str]] = {}
    for path in journal.visible_files(root, f"readings/site={site}" if site else "readings"):
        key = journal.key_of(path)
        if key is not None:
            names.setdefault(key[:3], []).append(key[3])
    busy = {(e.site, e.date, e.hour) for _, e in journal.snapshot(root).entries(root, "pending", "committed")}
    due = {}
    for hour in sorted(names, key=lambda h: (h[1], h[2], h[0])):
        files = names[hour]
        closed = hour_us(hour[1], hour[2]) + HOUR_US + int(policy.close_after_s * 1_000_000) <= now_us
        if closed and hour not in busy and (len(files) > 1 or not is_compacted(files[0])):
            due[hour] = sorted(files)
    return due


def compact_hour(
    root: Root,
    hour: Hour,
    policy: Policy,
    scratch: Path,
    *,
    now_us: int,
    pause: Pause = no_pause,
    stopping: Callable[[], bool] = lambda: False,
) -> Entry | None:
    """Compact one site-hour; ``None`` if there is nothing to do. The caller holds the compaction lock.

    ``stopping`` is polled while the files are sorted: when it turns true, the compaction is rolled
    back and :class:`Interrupted` raised.
    """
    site, date, hr = hour
    folder = f"readings/site={site}/date={date}/hour={hr:02d}"
    names = []
    for path in journal.visible_files(root, folder):
        name = path.rsplit("/", 1)[1][: -len(".parquet")]
        # A raw file whose partials are not written yet is still being flushed: leave it for later.
        if all(root.exists(p) for p in _partial_paths(site, date, hr, name)):
            names.append(name)
    if not names or (len(names) == 1 and is_compacted(names[0])):
        return None
    ident = secrets.token_hex(6)
    entry = Entry(ident, site, date, hr, tuple(names), f"{PREFIX}{ident}", created_us=now_us)
    journal.write(root, entry, "pending")
    pause("pending")
    try:
        old, minutes, hours = _write_merged(root, entry, policy, scratch, stopping)
        pause("written")
        new = _checksum_of(root, raw_path(site, date, hr, entry.new), scratch)
        if (new.rows, new.total) != (old.rows, old.total):
            raise VerificationFailed(
                f"compacted {folder} holds {new.hex} (rows:checksum), its {len(names)} files {old.hex}",
                {"folder": folder, "expected": old.hex, "found": new.hex},
            )
        pause("verified")
        for path, table in zip(_partial_paths(site, date, hr, entry.new), (minutes, hours), strict=True):
            root.write(path, rollup.parquet_bytes(table))
        pause("partials")
    except BaseException:
        rollback(root, entry)
        raise
    entry = dataclasses.replace(entry, rows=old.rows, checksum=old.hex, committed_us=now_us)
    journal.write(root, entry, "committed", before="pending")
    pause("committed")
    log.info("compacted %s: %d files, %d readings into %s", folder, len(names), old.rows, entry.new)
    if policy.grace_s <= 0:
        retire(root, entry, now_us=now_us, pause=pause)
    return entry


def _write_merged(
    root: Root, entry: Entry, policy: Policy, scratch: Path, stopping: Callable[[], bool]
) -> tuple[Checksum, pa.Table, pa.Table]:
    """Sort the old files into the new one; their checksum and the new file's partials."""

    def check() -> None:
        if stopping():
            raise Interrupted(f"compaction of {entry.folder} stopped", {"folder": entry.folder})

    old = Checksum()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="compact-") as tmp:
        spill = Spill(Path(tmp), memory_rows=policy.chunk_rows)
        for name in entry.old:
            check()
            table = pq.read_table(arrow_file(root.read(raw_path(entry.site, entry.date, entry.hour, name))))
            old.add(table)
            spill.add(table)
            del table
        sensors, _ = spill.sensors.sorted()
        metrics, _ = spill.metrics.sorted()
        gateways = pa.array(list(spill.gateways.ids), pa.string())
        with root.write_stream(raw_path(entry.site, entry.date, entry.hour, entry.new)) as sink:
            writer = Writer(
                sink,
                sensors=sensors,
                metrics=metrics,
                gateways=gateways,
                row_group_rows=policy.row_group_rows,
                compression_level=policy.compression_level,
            )
            for chunk in spill.chunks(policy.chunk_rows):
                check()
                writer.add(chunk)
            minutes, hours = writer.close()
    return old, minutes, hours


def _checksum_of(root: Root, path: str, scratch: Path) -> Checksum:
    """The checksum of a raw file as stored, read one row group at a time.

    A local file is memory-mapped; from other roots the file is copied to the scratch folder first,
    so that a large file is never held in memory whole.
    """
    found = Checksum()
    with tempfile.TemporaryDirectory(dir=scratch, prefix="verify-") as tmp:
        local = Path(root.duckdb_glob(path)) if root.duckdb_dirs() else None
        if local is None or not local.is_file():
            local = Path(tmp) / "file.parquet"
            with open(local, "wb") as copy:
                for piece in root.read_stream(path):
                    copy.write(piece)
        with pa.memory_map(str(local)) as mapped:
            source = pq.ParquetFile(mapped)
            for group in range(source.num_row_groups):
                found.add(source.read_row_group(group))
    return found


def rollback(root: Root, entry: Entry) -> None:
    """Undo a pending compaction: delete the new file and its partials, then mark the entry aborted."""
    root.delete(raw_path(entry.site, entry.date, entry.hour, entry.new))
    for path in _partial_paths(entry.site, entry.date, entry.hour, entry.new):
        root.delete(path)
    journal.write(root, entry, "aborted", before="pending")
    log.warning("compaction of %s rolled back; its old files stay", entry.folder)


def retire(root: Root, entry: Entry, *, now_us: int, pause: Pause = no_pause) -> None:
    """Move a committed compaction's old files to ``retired/{id}/`` and delete their partials."""
    for i, name in enumerate(entry.old):
        source = raw_path(entry.site, entry.date, entry.hour, name)
        if root.exists(source):
            root.move(source, f"retired/{entry.id}/{source}")
        for path in _partial_paths(entry.site, entry.date, entry.hour, name):
            root.delete(path)
        if i == len(entry.old) // 2:
            pause("retiring")
    journal.write(root, dataclasses.replace(entry, retired_us=now_us), "retired", before="committed")
    pause("retired")


def tidy(root: Root, policy: Policy, *, now_us: int, pause: Pause = no_pause) -> dict[str, int]:
    """Finish what the journal says is under way; the caller holds the compaction lock.

    Pending entries (a compaction that crashed) are rolled back, committed ones are retired once
    their grace period is over, and retired files older than the retention period are deleted.
    """
    done = {"rolled_back": 0, "retired": 0, "deleted": 0}
    for state, entry in journal.snapshot(root).entries(root, *journal.STATES):
        if state == "pending":
            rollback(root, entry)
            done["rolled_back"] += 1
        elif state == "committed" and now_us - entry.committed_us >= policy.grace_s * 1_000_000:
            retire(root, entry, now_us=now_us, pause=pause)
            done["retired"] += 1
        elif state in ("retired", "aborted"):
            since = entry.retired_us if state == "retired" else entry.created_us
            if now_us - since >= policy.retention_s * 1_000_000:
                for path in root.list(f"retired/{entry.id}"):
                    root.delete(path)
                    done["deleted"] += 1
                journal.remove(root, entry)
    return done


def run(
    root: Root,
    policy: Policy,
    scratch: Path,
    *,
    now_us: int,
    site: str | None = None,
    max_hours: int | None = None,
    pause: Pause = no_pause,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, int]:
    """One pass over a root: :func:`tidy`, then compact due hours (at most ``max_hours``)."""
    report = tidy(root, policy, now_us=now_us, pause=pause)
    report.update(hours=0, files=0, readings=0)
    due = list(hours_to_compact(root, now_us, policy, site))
    for n, hour in enumerate(due[:max_hours] if max_hours is not None else due, 1):
        progress(f"compacting {hour[0]} {hour[1]} {hour[2]:02d}h ({n} of {len(due)})")
        entry = compact_hour(root, hour, policy, scratch, now_us=now_us, pause=pause)
        if entry is not None:
            report["hours"] += 1
            report["files"] += len(entry.old)
            report["readings"] += entry.rows
    # Committed compactions whose old files wait for the grace period (retired by a later pass).
    report["awaiting_retirement"] = len(journal.snapshot(root).entries(root, "committed"))
    return report
