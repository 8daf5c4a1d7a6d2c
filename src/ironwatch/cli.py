"""The ``ironwatch`` command. Thin: it parses arguments, calls services and prints.

Errors print one line and exit 1 (2 for usage errors); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ironwatch import __version__, config
from ironwatch.errors import InvalidInput, IronwatchError, QueryError
from ironwatch.gateway.commands import register as register_gateway
from ironwatch.logs import setup as setup_logging
from ironwatch.model import Role

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace, **flags: Any) -> config.Settings:
    base = {"server.data_dir": getattr(args, "data_dir", None), "log.level": getattr(args, "log_level", None)}
    return config.load({**base, **flags})


def _store(args: argparse.Namespace) -> Any:
    from ironwatch.store import Store

    return Store(_settings(args).store_url)


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# server ----------------------------------------------------------------------------------------
def cmd_server(args: argparse.Namespace) -> int:
    """Run the HTTP server (and the MQTT subscriber with --mqtt-url) until Ctrl-C."""
    from ironwatch.web.server import serve

    settings = _settings(
        args, **{"server.host": args.host, "server.port": args.port, "mqtt.url": args.mqtt_url}
    )
    setup_logging(settings.log.level)
    serve(settings)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print every setting, its value and where the value came from."""
    settings = _settings(args)
    rows = [(name, config.masked(name, value), origin) for name, value, origin in settings.items()]
    if args.json:
        _print_json([{"name": n, "value": v, "origin": o} for n, v, o in rows])
        return 0
    width = max(len(n) for n, _, _ in rows)
    for name, value, origin in rows:
        print(f"{name:<{width}}  {value!s:<40}  ({origin})")
    return 0


# tenants, keys, gateways -----------------------------------------------------------------------
def cmd_tenants_create(args: argparse.Namespace) -> int:
    """Create a tenant; its data lives under --root (default DATA_DIR/lake/NAME)."""
    from ironwatch import lake

    settings = _settings(args)
    store = _store(args)
    root_url = args.root or settings.root_url(args.name)
    lake.open_root(root_url)  # refuse a root that cannot be opened before registering it
    tenant = store.create_tenant(args.name, root_url)
    print(f"tenant {tenant.name} created; storage root {tenant.root_url}")
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    """List tenants and their storage roots."""
    for t in _store(args).tenants():
        print(f"{t.name}\t{t.root_url}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key and print it once; only its hash is stored."""
    key, secret = _store(args).create_key(
        args.tenant, args.role, site=args.site, gateway=args.gateway, label=args.label
    )
    if args.json:
        _print_json({"id": key.id, "tenant": key.tenant, "role": key.role.value, "key": secret})
    else:
        print(secret)
        print(
            f"(key {key.id}, role {key.role.value}, tenant {key.tenant}: shown once, store it now)",
            file=sys.stderr,
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id (or by the key itself); it is refused from then on."""
    key = _store(args).revoke_key(args.key, tenant=args.tenant)
    print(f"key {key.id} of tenant {key.tenant} revoked")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List a tenant's keys (never the secrets)."""
    for k in _store(args).keys(args.tenant):
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        scope = ",".join(x for x in (k.site and f"site={k.site}", k.gateway and f"gateway={k.gateway}") if x)
        print(f"{k.id}\t{k.role.value}\t{state}\t{scope or '-'}\t{k.label or ''}")
    return 0


def cmd_gateways_add(args: argparse.Namespace) -> int:
    """Register a gateway to a site, so that its MQTT messages are accepted."""
    g = _store(args).add_gateway(args.tenant, args.gateway, args.site)
    print(f"gateway {g.gateway} registered to site {g.site} of tenant {g.tenant}")
    return 0


def cmd_gateways_list(args: argparse.Namespace) -> int:
    """List a tenant's gateways."""
    for g in _store(args).gateways(args.tenant):
        seen = g.last_seen_at.isoformat() if g.last_seen_at else "never"
        print(f"{g.gateway}\t{g.site}\tlast heartbeat {seen}")
    return 0


# query -----------------------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    """Run SQL over a tenant's lake, locally (--data-dir/--tenant) or on a server (--url/--key)."""
    # --tenant means a local query, even when IRONWATCH_URL is set for server queries.
    url = args.url or (None if args.tenant else os.environ.get("IRONWATCH_URL"))
    key = args.key or os.environ.get("IRONWATCH_KEY")
    fmt = args.format or (_format_from_name(args.output) if args.output else "csv")
    if url:
        if not key:
            raise InvalidInput("--key", "a server query needs --key or IRONWATCH_KEY")
        return _query_server(args, url, key, fmt)
    if args.job:
        raise InvalidInput("--job", "query jobs run on a server: give --url and --key")
    else:
        if not args.tenant:
            raise InvalidInput("--tenant", "a local query needs --tenant (or --url and --key for a server)")
        from ironwatch import lake

        settings = _settings(args)
        store = _store(args)
        from ironwatch.ingest import Tracker, health_report

        root = lake.open_root(store.tenant(args.tenant).root_url)
        with lake.Pool(idle=1) as pool:  # short-lived: one query, the same sandboxed path as a server's
            table = lake.query.run(
                root,
                args.sql,
                tables=health_report.sql_tables(store, args.tenant, Tracker.saved(settings, store)),
                timeout_s=float(settings.query.timeout_s),
                memory_limit=str(settings.query.memory_limit),
                fmt=fmt,
                pool=pool,
            )
        data = lake.query.encode(table, fmt)
    with _output(args.output) as out:
        out.write(data)
    return 0


def _query_server(args: argparse.Namespace, url: str, key: str, fmt: str) -> int:
    """A synchronous query, or a query job (with progress on stderr) for --job and for answers
    larger than a synchronous one may be."""
    from ironwatch import remote

    server = remote.Remote(url, key)
    if args.job and fmt != "csv":
        raise InvalidInput("--format", "a query job saves CSV: leave out --format, or use csv")
    if not args.job:
        try:
            data = server.query(args.sql, fmt)
        except QueryError as exc:
            if "max_rows" not in exc.details or fmt != "csv":
                raise
            rows = exc.details["max_rows"]
            print(f"the answer has more than {rows:,} rows: running the query as a job", file=sys.stderr)
        else:
            with _output(args.output) as out:
                out.write(data)
            return 0
    with _output(args.output) as out:
        remote.run_job(server, args.sql, out, lambda line: print(line, file=sys.stderr, flush=True))
    return 0


@contextmanager
def _output(path: str | None) -> Iterator[BinaryIO]:
    """stdout, or the file ``path``, which appears only once it is complete."""
    if not path or path == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    part = Path(f"{path}.part")
    try:
        with part.open("wb") as file:
            yield file
        part.replace(path)
    except OSError as exc:
        raise IronwatchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)


def _format_from_name(name: str) -> str:
    suffix = Path(name).suffix.lstrip(".").lower()
    return suffix if suffix in {"csv", "json", "parquet"} else "csv"


# demo and bench --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the server and a gateway with the simulator on embedded defaults, until Ctrl-C."""
    from ironwatch.demo import Options, run_demo

    settings = _settings(args, **{"server.port": args.port})
    setup_logging(settings.log.level)
    options = Options(
        sensors=args.sensors,
        backfill_days=args.backfill_days,
        backfill_rate_per_min=args.backfill_rate,
        outage_every_s=args.outage_every,
        outage_s=args.outage_s,
    )
    return run_demo(settings, options, duration_s=args.duration)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    """Measure ingest: a server on a temporary data dir, readings pushed from separate client processes."""
    from ironwatch.bench.ingest import run_ingest_bench

    result = run_ingest_bench(
        transport=args.transport,
        readings=args.readings,
        batch=args.batch,
        clients=args.clients,
        form=args.form,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>22}  {value}")
    return 0


def cmd_bench_rollup(args: argparse.Namespace) -> int:
    """Measure rollups: the minute and hour partials of one hour of a 550 x 17 site at 1 Hz."""
    from ironwatch.bench.rollup import run_rollup_bench

    _print_result(run_rollup_bench(sensors=args.sensors, seconds=args.seconds, runs=args.runs), args.json)
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
    _print_result(result, args.json)
    return 0


def cmd_bench_query(args: argparse.Namespace) -> int:
    """Measure SQL: one sensor-metric-day from a week-long compacted lake, through the sandbox."""
    from ironwatch.bench.query import run_query_bench

    result = run_query_bench(
        days=args.days, sensors=args.sensors, queries=args.queries, lake_dir=args.lake_dir
    )
    _print_result(result, args.json)
    return 0


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>24}  {value}")


# lake maintenance ------------------------------------------------------------------------------
def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact the closed hours of a tenant's raw readings now, as the server does in the background."""
    from ironwatch import lake
    from ironwatch.lake import compaction, compactor
    from ironwatch.model import utc_now_us

    settings = _settings(args)
    root = lake.open_root(_store(args).tenant(args.tenant).root_url)
    pause = compactor.pause_at(args.pause_at) if args.pause_at else compaction.no_pause
    with compactor.locked(compactor.lock_path(settings.data_dir), wait=True):
        report = compaction.run(
            root,
            compaction.Policy.from_settings(settings.lake),
            compactor.scratch_dir(settings.data_dir),
            now_us=utc_now_us(),
            site=args.site,
            max_hours=args.hours,
            pause=pause,
            progress=_stderr,
        )
    _print_json(report)
    return 0


def cmd_rollups_rebuild(args: argparse.Namespace) -> int:
    """Recompute a tenant's rollups from its raw readings; rollups whose raw file is gone are deleted."""
    from ironwatch import lake
    from ironwatch.lake import compactor, rebuild

    settings = _settings(args)
    since_us = _time_us("--since", args.since) if args.since else None
    root = lake.open_root(_store(args).tenant(args.tenant).root_url)
    shown = [0.0]

    def progress(report: rebuild.Report) -> None:
        if time.monotonic() - shown[0] >= 1.0 or report.files == report.files_total:
            shown[0] = time.monotonic()
            left = f", {report.left_s:.0f} s left" if report.left_s is not None else ""
            _stderr(
                f"rollups: {report.files} of {report.files_total} raw files "
                f"({100 * report.files // max(1, report.files_total)}%), {report.readings:,} readings{left}"
            )

    with compactor.locked(compactor.lock_path(settings.data_dir), wait=True):
        report = rebuild.rebuild(root, site=args.site, since_us=since_us, progress=progress)
    _print_json(report.to_json())
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


# parser ----------------------------------------------------------------------------------------
def _add(sub: Any, name: str, handler: Handler, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=(handler.__doc__ or "").splitlines()[0],
        description=handler.__doc__,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    parser.set_defaults(handler=handler)
    return parser


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="data directory (default ./ironwatch-data, or IRONWATCH_SERVER__DATA_DIR)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironwatch",
        description="Self-hostable predictive maintenance: from PLC readings to the mechanic on call.",
        epilog="example:\n  ironwatch demo --data-dir demo-data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ironwatch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--log-level", help="debug, info, warning (default) or error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "server", cmd_server, "ironwatch server --data-dir /srv/ironwatch --port 8000")
    _data_dir(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--mqtt-url", help="subscribe to this broker, such as mqtt://127.0.0.1:1883")

    p = _add(sub, "demo", cmd_demo, "ironwatch demo --data-dir demo-data")
    _data_dir(p)
    p.add_argument(
        "--port",
        type=int,
        help="TCP port (default 8000, or a free one when 8000 is taken; 0 picks a free one)",
    )
    p.add_argument("--sensors", type=int, default=550, help="simulated sensors (default 550)")
    p.add_argument(
        "--backfill-days",
        type=float,
        default=3.0,
        help="days of history the gateway sends on its first run (default 3; 0 for none)",
    )
    p.add_argument(
        "--backfill-rate",
        type=float,
        default=2.0,
        metavar="PER_MIN",
        help="readings per minute per metric in the history (default 2; live readings: 30)",
    )
    p.add_argument(
        "--outage-every",
        type=float,
        default=240.0,
        metavar="S",
        help="cut the gateway's uplink every S seconds (default 240; 0: never)",
    )
    p.add_argument(
        "--outage-s", type=float, default=30.0, metavar="S", help="length of each outage (default 30 s)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop this many seconds after it is ready (default: Ctrl-C)",
    )

    register_gateway(sub)

    cfg = sub.add_parser("config", help="show the settings").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = _add(cfg, "show", cmd_config_show, "ironwatch config show --data-dir /srv/ironwatch")
    _data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    ten = sub.add_parser("tenants", help="create and list tenants").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = _add(ten, "create", cmd_tenants_create, "ironwatch tenants create acme --data-dir /srv/ironwatch")
    p.add_argument("name")
    p.add_argument("--root", help="storage root URL (default DATA_DIR/lake/NAME)")
    _data_dir(p)
    p = _add(ten, "list", cmd_tenants_list, "ironwatch tenants list --data-dir /srv/ironwatch")
    _data_dir(p)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = _add(
        keys, "create", cmd_keys_create, "ironwatch keys create --tenant acme --role analyst --data-dir DIR"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--site", help="limit the key to one site")
    p.add_argument("--gateway", help="limit the key to one gateway")
    p.add_argument("--label", help="a note on what the key is for")
    p.add_argument("--json", action="store_true", help="print JSON")
    _data_dir(p)
    p = _add(keys, "revoke", cmd_keys_revoke, "ironwatch keys revoke 3f9a0c1b2d4e --data-dir DIR")
    p.add_argument("key", help="key id, or the key itself")
    p.add_argument("--tenant", help="only revoke it if it belongs to this tenant")
    _data_dir(p)
    p = _add(keys, "list", cmd_keys_list, "ironwatch keys list --tenant acme --data-dir DIR")
    p.add_argument("--tenant", required=True)
    _data_dir(p)

    gws = sub.add_parser("gateways", help="register and list gateways").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = _add(
        gws,
        "add",
        cmd_gateways_add,
        "ironwatch gateways add gw-hall-a --site hall-a --tenant acme --data-dir DIR",
    )
    p.add_argument("gateway")
    p.add_argument("--site", required=True)
    p.add_argument("--tenant", required=True)
    _data_dir(p)
    p = _add(gws, "list", cmd_gateways_list, "ironwatch gateways list --tenant acme --data-dir DIR")
    p.add_argument("--tenant", required=True)
    _data_dir(p)

    p = _add(
        sub,
        "query",
        cmd_query,
        'ironwatch query --data-dir DIR --tenant acme "SELECT sensor, avg(value) FROM readings GROUP BY 1"',
    )
    p.add_argument("sql")
    p.add_argument("--tenant", help="tenant to query locally")
    p.add_argument("--url", help="server to query (or IRONWATCH_URL)")
    p.add_argument("--key", help="API key for --url (or IRONWATCH_KEY)")
    p.add_argument("--format", choices=["csv", "json", "parquet"], help="default csv, or from -o's suffix")
    p.add_argument("-o", "--output", help="write the result to this file instead of stdout")
    p.add_argument(
        "--job",
        action="store_true",
        help="run it as a query job on the server (CSV; for large answers, which also take this way by "
        "themselves); progress goes to stderr",
    )
    _data_dir(p)

    bench = sub.add_parser("bench", help="measure performance (JSON output)").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = _add(
        bench, "ingest", cmd_bench_ingest, "ironwatch bench ingest --transport http --readings 2000000 --json"
    )
    p.add_argument("--transport", choices=["http", "mqtt"], default="http")
    p.add_argument("--form", choices=["rows", "columns"], default="rows", help="envelope form (default rows)")
    p.add_argument("--readings", type=int, default=2_000_000)
    p.add_argument("--batch", type=int, default=1000, help="readings per batch or message")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = _add(bench, "rollup", cmd_bench_rollup, "ironwatch bench rollup --json")
    p.add_argument("--sensors", type=int, default=550, help="sensors of 17 metrics (default 550)")
    p.add_argument("--seconds", type=int, default=3600, help="seconds of 1 Hz readings (default 3600)")
    p.add_argument("--runs", type=int, default=5, help="timed runs; the median counts (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = _add(bench, "gateway", cmd_bench_gateway, "ironwatch bench gateway --json")
    p.add_argument("--sensors", type=int, default=550, help="simulated sensors of 17 metrics (default 550)")
    p.add_argument("--outage-hours", type=float, default=6.0, help="length of the outage (default 6)")
    p.add_argument("--rate-per-min", type=float, default=30.0, help="declared readings per metric per minute")
    p.add_argument("--delivery", type=float, help="share of readings delivered (default: the simulator's)")
    p.add_argument(
        "--sample-seconds", type=float, default=30.0, help="live sampling run (default 30; 0 skips)"
    )
    p.add_argument("--in-flight", type=int, default=4, help="batches on their way at once (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = _add(bench, "query", cmd_bench_query, "ironwatch bench query --lake-dir /var/tmp/iw-week --json")
    p.add_argument("--days", type=int, default=7, help="days of readings in the lake (default 7)")
    p.add_argument("--sensors", type=int, default=550, help="sensors of 17 metrics (default 550)")
    p.add_argument("--queries", type=int, default=60, help="timed queries (default 60)")
    p.add_argument("--lake-dir", help="build the lake here and keep it for the next run (default: temporary)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _add(sub, "compact", cmd_compact, "ironwatch compact --tenant acme --data-dir /srv/ironwatch")
    p.add_argument("--tenant", required=True)
    p.add_argument("--site", help="only this site")
    p.add_argument("--hours", type=int, help="compact at most this many hours")
    # Crash tests: stop at a named step until killed (see lake.compaction.STEPS).
    p.add_argument("--pause-at", help=argparse.SUPPRESS)
    _data_dir(p)

    rollups = sub.add_parser("rollups", help="rebuild rollups from raw readings").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    p = _add(
        rollups,
        "rebuild",
        cmd_rollups_rebuild,
        "ironwatch rollups rebuild --tenant acme --site hall-a --since 2026-11-24 --data-dir DIR",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--site", help="only this site")
    p.add_argument("--since", help="only hours that end after this date or time (ISO 8601, UTC by default)")
    _data_dir(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ironwatch`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler: Handler = args.handler
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    except IronwatchError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
