"""``ironwatch bench``: measure ingest, rollups, SQL and the gateway against the performance targets."""

from __future__ import annotations

import argparse
from typing import Any

from ironwatch.cli.command import add, group, print_result


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    """Measure ingest: a server on a temporary data dir, readings pushed from separate client processes."""
    from ironwatch.bench.ingest import run_ingest_bench

    result = run_ingest_bench(
        transport=args.transport,
        readings=args.readings,
        batch=args.batch,
        clients=args.clients,
        form=args.form,
        workers=args.workers,
    )
    print_result(result, args.json)
    return 0


def cmd_bench_rollup(args: argparse.Namespace) -> int:
    """Measure rollups: the minute and hour partials of one hour of a 550 x 17 site at 1 Hz."""
    from ironwatch.bench.rollup import run_rollup_bench

    print_result(run_rollup_bench(sensors=args.sensors, seconds=args.seconds, runs=args.runs), args.json)
    return 0


def cmd_bench_gateway(args: argparse.Namespace) -> int:
    """Measure the gateway: drain the backlog of an outage (x real time) and the CPU cost of sampling."""
    from ironwatch.bench.gateway import run_gateway_bench

    result = run_gateway_bench(
        sensors=args.sensors,
        outage_h=args.outage_hours,
        rate_per_min=args.rate_per_min,
        delivery=args.delivery,
        sample_s=args.sample_seconds,
        in_flight=args.in_flight,
    )
    print_result(result, args.json)
    return 0


def cmd_bench_query(args: argparse.Namespace) -> int:
    """Measure SQL: one sensor-metric-day from a week-long compacted lake, through the sandbox."""
    from ironwatch.bench.query import run_query_bench

    result = run_query_bench(
        days=args.days, sensors=args.sensors, queries=args.queries, lake_dir=args.lake_dir
    )
    print_result(result, args.json)
    return 0


def register(sub: Any) -> None:
    """Add ``bench`` and its subcommands to the ``ironwatch`` parser."""
    bench = group(sub, "bench", "measure performance (JSON output)")
    p = add(
        bench, "ingest", cmd_bench_ingest, "ironwatch bench ingest --transport http --readings 2000000 --json"
    )
    p.add_argument("--transport", choices=["http", "mqtt"], default="http")
    p.add_argument("--form", choices=["rows", "columns"], default="rows", help="envelope form (default rows)")
    p.add_argument("--readings", type=int, default=2_000_000)
    p.add_argument("--batch", type=int, default=1000, help="readings per batch or message")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="the server's ingest.workers (default: the server's own setting)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = add(bench, "rollup", cmd_bench_rollup, "ironwatch bench rollup --json")
    p.add_argument("--sensors", type=int, default=550, help="sensors of 17 metrics (default 550)")
    p.add_argument("--seconds", type=int, default=3600, help="seconds of 1 Hz readings (default 3600)")
    p.add_argument("--runs", type=int, default=5, help="timed runs; the median counts (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = add(bench, "gateway", cmd_bench_gateway, "ironwatch bench gateway --json")
    p.add_argument("--sensors", type=int, default=550, help="simulated sensors of 17 metrics (default 550)")
    p.add_argument("--outage-hours", type=float, default=6.0, help="length of the outage (default 6)")
    p.add_argument("--rate-per-min", type=float, default=30.0, help="declared readings per metric per minute")
    p.add_argument("--delivery", type=float, help="share of readings delivered (default: the simulator's)")
    p.add_argument(
        "--sample-seconds", type=float, default=30.0, help="live sampling run (default 30; 0 skips)"
    )
    p.add_argument("--in-flight", type=int, default=4, help="batches on their way at once (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = add(bench, "query", cmd_bench_query, "ironwatch bench query --lake-dir /var/tmp/iw-week --json")
    p.add_argument("--days", type=int, default=7, help="days of readings in the lake (default 7)")
    p.add_argument("--sensors", type=int, default=550, help="sensors of 17 metrics (default 550)")
    p.add_argument("--queries", type=int, default=60, help="timed queries (default 60)")
    p.add_argument("--lake-dir", help="build the lake here and keep it for the next run (default: temporary)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
