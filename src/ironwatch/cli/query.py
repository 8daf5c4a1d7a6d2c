"""``ironwatch query``: SQL over a tenant's lake, locally or on a server (then through the HTTP API)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ironwatch.cli.command import add, data_dir, settings, store
from ironwatch.errors import InvalidInput, IronwatchError, QueryError


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
    if not args.tenant:
        raise InvalidInput("--tenant", "a local query needs --tenant (or --url and --key for a server)")
    # A local query is the only path that needs the server extra (DuckDB, SQLAlchemy).
    from ironwatch import lake

    run_settings = settings(args)
    tenants = store(args)
    from ironwatch.ingest import Tracker, health_report

    root = lake.open_root(tenants.tenant(args.tenant).root_url)
    with lake.Pool(idle=1) as pool:  # short-lived: one query, the same sandboxed path as a server's
        table = lake.query.run(
            root,
            args.sql,
            tables=health_report.sql_tables(tenants, args.tenant, Tracker.saved(run_settings, tenants)),
            timeout_s=float(run_settings.query.timeout_s),
            memory_limit=str(run_settings.query.memory_limit),
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


def register(sub: Any) -> None:
    """Add ``query`` to the ``ironwatch`` parser."""
    p = add(
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
    data_dir(p)
