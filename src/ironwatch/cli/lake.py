"""Lake maintenance: ``ironwatch compact`` and ``ironwatch rollups rebuild``, run by hand what the
server does in the background."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from ironwatch.cli.command import add, data_dir, group, print_json, settings, stderr, store
from ironwatch.errors import InvalidInput


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact the closed hours of a tenant's raw readings now, as the server does in the background."""
    from ironwatch import lake
    from ironwatch.lake import compaction, compactor
    from ironwatch.model import utc_now_us

    run_settings = settings(args)
    root = lake.open_root(store(args).tenant(args.tenant).root_url)
    pause = compactor.pause_at(args.pause_at) if args.pause_at else compaction.no_pause
    with compactor.locked(compactor.lock_path(run_settings.data_dir), wait=True):
        report = compaction.run(
            root,
            compaction.Policy.from_settings(run_settings.lake),
            compactor.scratch_dir(run_settings.data_dir),
            now_us=utc_now_us(),
            site=args.site,
            max_hours=args.hours,
            pause=pause,
            progress=stderr,
        )
    print_json(report)
    return 0


def cmd_rollups_rebuild(args: argparse.Namespace) -> int:
    """Recompute a tenant's rollups from its raw readings; rollups whose raw file is gone are deleted."""
    from ironwatch import lake
    from ironwatch.lake import compactor, rebuild

    run_settings = settings(args)
    since_us = _time_us("--since", args.since) if args.since else None
    root = lake.open_root(store(args).tenant(args.tenant).root_url)
    shown = [0.0]

    def progress(report: rebuild.Report) -> None:
        if time.monotonic() - shown[0] >= 1.0 or report.files == report.files_total:
            shown[0] = time.monotonic()
            left = f", {report.left_s:.0f} s left" if report.left_s is not None else ""
            stderr(
                f"rollups: {report.files} of {report.files_total} raw files "
                f"({100 * report.files // max(1, report.files_total)}%), {report.readings:,} readings{left}"
            )

    with compactor.locked(compactor.lock_path(run_settings.data_dir), wait=True):
        report = rebuild.rebuild(root, site=args.site, since_us=since_us, progress=progress)
    print_json(report.to_json())
    return 0


def _time_us(flag: str, text: str) -> int:
    """Epoch microseconds of an ISO 8601 date or time (UTC unless it names an offset)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(flag, f"{text!r} is not a date or time such as 2026-11-24T10:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def register(sub: Any) -> None:
    """Add ``compact`` and ``rollups`` to the ``ironwatch`` parser."""
    p = add(sub, "compact", cmd_compact, "ironwatch compact --tenant acme --data-dir /srv/ironwatch")
    p.add_argument("--tenant", required=True)
    p.add_argument("--site", help="only this site")
    p.add_argument("--hours", type=int, help="compact at most this many hours")
    # Crash tests: stop at a named step until killed (see lake.compaction.STEPS).
    p.add_argument("--pause-at", help=argparse.SUPPRESS)
    data_dir(p)

    rollups = group(sub, "rollups", "rebuild rollups from raw readings")
    p = add(
        rollups,
        "rebuild",
        cmd_rollups_rebuild,
        "ironwatch rollups rebuild --tenant acme --site hall-a --since 2026-11-24 --data-dir DIR",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--site", help="only this site")
    p.add_argument("--since", help="only hours that end after this date or time (ISO 8601, UTC by default)")
    data_dir(p)
