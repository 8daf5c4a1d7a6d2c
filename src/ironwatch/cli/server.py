"""``ironwatch server`` and ``ironwatch demo``: the commands that run a server until Ctrl-C."""

from __future__ import annotations

import argparse
from typing import Any

from ironwatch.cli.command import add, data_dir, settings
from ironwatch.logs import setup as setup_logging


def cmd_server(args: argparse.Namespace) -> int:
    """Run the HTTP server (and the MQTT subscriber with --mqtt-url) until Ctrl-C."""
    from ironwatch.web.server import serve

    run_settings = settings(
        args, **{"server.host": args.host, "server.port": args.port, "mqtt.url": args.mqtt_url}
    )
    setup_logging(run_settings.log.level)
    serve(run_settings)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the server and a gateway with the simulator on embedded defaults, until Ctrl-C."""
    from ironwatch.demo import Options, run_demo

    run_settings = settings(args, **{"server.port": args.port})
    setup_logging(run_settings.log.level)
    options = Options(
        sensors=args.sensors,
        backfill_days=args.backfill_days,
        backfill_rate_per_min=args.backfill_rate,
        outage_every_s=args.outage_every,
        outage_s=args.outage_s,
    )
    return run_demo(run_settings, options, duration_s=args.duration)


def register(sub: Any) -> None:
    """Add ``server`` and ``demo`` to the ``ironwatch`` parser."""
    p = add(sub, "server", cmd_server, "ironwatch server --data-dir /srv/ironwatch --port 8000")
    data_dir(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--mqtt-url", help="subscribe to this broker, such as mqtt://127.0.0.1:1883")

    p = add(sub, "demo", cmd_demo, "ironwatch demo --data-dir demo-data")
    data_dir(p)
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
