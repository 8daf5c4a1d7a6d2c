"""What every ``ironwatch`` command is built from: its parser entry, its settings and store, its output.

A leaf module: the command groups import it, and the package's ``__init__`` imports the groups, so
these helpers cannot live in ``__init__`` without an import cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ironwatch import config

Handler = Callable[[argparse.Namespace], int]


def add(sub: Any, name: str, handler: Handler, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add the subcommand ``name``: its help is the handler's docstring, its epilog the example."""
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


def group(sub: Any, name: str, help_text: str) -> Any:
    """Add the command ``name`` whose subcommands (``SUB``) do the work, such as ``keys create``."""
    return sub.add_parser(name, help=help_text).add_subparsers(dest="sub", required=True, metavar="SUB")


def data_dir(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir``, which every command on a server's data takes."""
    parser.add_argument(
        "--data-dir", help="data directory (default ./ironwatch-data, or IRONWATCH_SERVER__DATA_DIR)"
    )


def settings(args: argparse.Namespace, **flags: Any) -> config.Settings:
    """The settings of this run: ``--data-dir``, ``--log-level`` and ``flags`` over the environment,
    ``ironwatch.toml`` and the defaults."""
    base = {"server.data_dir": getattr(args, "data_dir", None), "log.level": getattr(args, "log_level", None)}
    return config.load({**base, **flags})


def store(args: argparse.Namespace) -> Any:
    """The metadata store of the data directory (the server extra: SQLAlchemy)."""
    from ironwatch.store import Store

    return Store(settings(args).store_url)


def print_json(doc: Any) -> None:
    """Print ``doc`` as indented JSON."""
    print(json.dumps(doc, indent=2, default=str))


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a measurement as one JSON object, or one right-aligned ``name  value`` line per item."""
    if as_json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>24}  {value}")


def stderr(line: str) -> None:
    """Print a progress line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)
