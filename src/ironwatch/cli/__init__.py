"""The ``ironwatch`` command. Thin: it parses arguments, calls services and prints.

One module per command group, each adding its own parsers with ``register(sub)``: ``server``
(server, demo), ``ironwatch.gateway.commands`` (gateway), ``admin`` (config, tenants, keys,
gateways), ``query``, ``bench`` and ``lake`` (compact, rollups). Handlers import what they run
when they run, so ``ironwatch --help`` and the gateway start without the server's libraries.

Errors print one line and exit 1 (2 for usage errors); ``--debug`` shows the traceback. A library
of an extra that is not installed is one such error, naming the ``pip install`` line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ironwatch import __version__
from ironwatch.cli import admin, bench, lake, query, server
from ironwatch.cli.command import Handler
from ironwatch.errors import IronwatchError, MissingDependency
from ironwatch.gateway.commands import register as register_gateway

__all__ = ["build_parser", "main"]

# The libraries of the extras (pyproject.toml) that the CLI reaches through its handlers, by the
# name they are imported as: (the name pip knows them by, the extra). The gateway's sources and
# uplinks and the SDK say the same themselves where they import theirs.
EXTRA_MODULES: dict[str, tuple[str, str]] = {
    "duckdb": ("duckdb", "server"),
    "fastapi": ("fastapi", "server"),
    "starlette": ("fastapi", "server"),
    "uvicorn": ("uvicorn", "server"),
    "sqlalchemy": ("sqlalchemy", "server"),
    "msgspec": ("msgspec", "server"),
    "psutil": ("psutil", "bench"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``ironwatch`` command."""
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
    # This order is the order of the commands in --help.
    server.register(sub)
    register_gateway(sub)
    admin.register(sub)
    query.register(sub)
    bench.register(sub)
    lake.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ironwatch`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args.handler, args)
    except KeyboardInterrupt:
        return 130
    except IronwatchError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a handler; a library of a missing extra becomes the error that names its install line."""
    try:
        return int(handler(args))
    except ModuleNotFoundError as exc:
        # Only the library itself: a missing submodule of an installed library is another fault,
        # and a plain ImportError (a name missing from an installed module) is a version mismatch.
        if exc.name not in EXTRA_MODULES:
            raise
        package, extra = EXTRA_MODULES[exc.name]
        raise MissingDependency(package, extra) from exc
