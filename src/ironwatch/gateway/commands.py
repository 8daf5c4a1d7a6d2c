"""``ironwatch gateway``: run a gateway, write a starting config, check one, show a gateway's counts."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

from ironwatch.errors import ConfigError, IronwatchError
from ironwatch.gateway import config as gwconfig

log = logging.getLogger(__name__)

_RUN_DOC = """Run the edge gateway of a config file until Ctrl-C or SIGTERM.

Sources are sampled into a durable outbox and drained to the server; when it stops, the gateway
sends what it can for a few seconds and prints its counts as one JSON object on the last line."""


def register(sub: Any) -> None:
    """Add ``gateway`` and its subcommands to the ``ironwatch`` parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "gateway",
        help="run the edge gateway (and init, check, status)",
        description=_RUN_DOC,
        epilog=(
            "examples:\n"
            "  ironwatch gateway init --site hall-a --gateway gw-hall-a --uplink http://127.0.0.1:8000 "
            "--key KEY --simulator > gateway.toml\n"
            "  ironwatch gateway check --config gateway.toml\n"
            "  ironwatch gateway --config gateway.toml\n"
            "  ironwatch gateway status --config gateway.toml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="the gateway's TOML file")
    parser.add_argument(
        "--speed", type=float, help="simulator sources: run this many times faster than real time"
    )
    parser.add_argument(
        "--backfill", type=float, metavar="DAYS", help="simulator sources: first send DAYS of history"
    )
    parser.set_defaults(handler=cmd_gateway)
    gsub = parser.add_subparsers(dest="gateway_command", metavar="SUB")

    init = gsub.add_parser("init", help="print a working, commented gateway.toml to start from")
    init.add_argument("--site", required=True)
    init.add_argument("--gateway", required=True)
    init.add_argument("--uplink", required=True, help="http://SERVER:PORT or mqtt://BROKER:PORT")
    init.add_argument("--key", help="the gateway key (HTTP uplink)")
    init.add_argument("--tenant", help="the tenant (MQTT uplink: it is part of the topic)")
    init.add_argument("--simulator", action="store_true", help="sample the simulated sort center")
    init.add_argument("--sensors", type=int, default=550, help="simulated sensors (default 550)")
    init.set_defaults(handler=cmd_init)

    check = gsub.add_parser("check", help="check a config, its sources and its uplink")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=cmd_check)

    status = gsub.add_parser("status", help="print a gateway's counts from its outbox")
    which = status.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", type=Path, help="the gateway's gateway.toml")
    which.add_argument(
        "--outbox",
        type=Path,
        help="the outbox file itself (buffer.path), e.g. DATA_DIR/gateway/outbox.db of ironwatch demo",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)


def _load(args: argparse.Namespace) -> gwconfig.GatewayConfig:
    if args.config is None:
        raise ConfigError("--config", "required (ironwatch gateway init ... > gateway.toml writes one)")
    return gwconfig.load(args.config)


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run the gateway until stopped; the last line of standard output is the final counts."""
    from ironwatch.logs import setup as setup_logging

    setup_logging(args.log_level or "warning")
    # Catch Ctrl-C and SIGTERM from here on: one that comes while the gateway is being set up still
    # stops it cleanly (exit 0, counts printed) instead of killing it with the default action.
    early = threading.Event()
    handlers = _on_stop_signals(early)
    try:
        return _run_gateway(args, early)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _run_gateway(args: argparse.Namespace, early: threading.Event) -> int:
    from ironwatch.gateway.agent import Gateway

    config = _load(args)
    sims = [t for t in config.sources if t.get("type") == "simulator"]
    if args.speed is not None:
        config = gwconfig.with_sources(config, [_override(t, speed=args.speed) for t in config.sources])
    backfill_days = args.backfill
    if backfill_days is None:
        backfill_days = max((float(t.get("backfill_days", 0)) for t in sims), default=0.0)
    if backfill_days > 0 and any("start" in t for t in sims):
        # History ends where the live readings begin (now); a simulated start elsewhere would overlap it.
        raise ConfigError("--backfill", "cannot be combined with a simulator's start option")
    gateway = Gateway(config, backfill_days=backfill_days)
    _on_stop_signals(gateway.stop)
    if early.is_set():  # a signal came while it was set up (the handlers are restored by the caller)
        gateway.stop.set()
    counts = gateway.run()
    keys = ("sampled", "sent", "acknowledged", "buffered", "dropped", "dead_lettered", "last_batch")
    print(json.dumps({k: getattr(counts, k) for k in keys}), flush=True)
    return 0


def _override(table: Any, **values: Any) -> dict[str, Any]:
    return {**table, **values} if table.get("type") == "simulator" else dict(table)


def _on_stop_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}


def cmd_init(args: argparse.Namespace) -> int:
    """Print a working, commented ``gateway.toml``."""
    print(render_init(args))
    return 0


def render_init(args: argparse.Namespace) -> str:
    """The text of ``gateway init``, checked by parsing it before it is printed."""
    is_mqtt = args.uplink.startswith(("mqtt://", "mqtts://"))
    if is_mqtt and not args.tenant:
        raise ConfigError("--tenant", "an MQTT uplink needs the tenant (it is part of the topic)")
    if not is_mqtt and not args.key:
        raise ConfigError(
            "--key", "an HTTP uplink needs the gateway key (ironwatch keys create --role gateway)"
        )
    credentials = (
        f'tenant = "{args.tenant}"\n# username = ""   # when the broker asks for them\n# password = ""'
        if is_mqtt
        else f'key = "{args.key}"   # a gateway key: ironwatch keys create --tenant T --role gateway'
    )
    text = _INIT.format(site=args.site, gateway=args.gateway, uplink=args.uplink, credentials=credentials)
    sources = []
    simulator = re.sub(
        r"(?m)^sensors = \d+", f"sensors = {args.sensors}", gwconfig.source_template("simulator")
    )
    sources.append(simulator.strip())
    for kind in ("modbus", "opcua", "replay"):
        try:
            example = gwconfig.source_template(kind)
        except ImportError:
            continue
        sources.append("\n".join(f"# {line}" if line else "#" for line in example.strip().splitlines()))
    text += "\n\n".join(sources) + "\n"
    gwconfig.parse(tomllib.loads(text), Path("."))  # what init prints must load
    return text


def cmd_check(args: argparse.Namespace) -> int:
    """Check a config: the file, each source (connect and read once) and the uplink (one heartbeat)."""
    from ironwatch.gateway.agent import iso
    from ironwatch.gateway.uplink import open_uplink

    config = _load(args)
    print(f"config {args.config}: ok (gateway {config.gateway}, site {config.site})")
    failures = 0
    for i, source in enumerate(config.build_sources()):
        try:
            source.check()
            print(f"sources[{i}] {source.name}: ok")
        except IronwatchError as exc:
            failures += 1
            print(f"sources[{i}] {source.name}: {exc}")
        finally:
            source.close()
    uplink = open_uplink(config, is_probe=True)
    beat = {"gateway": config.gateway, "site": config.site, "ts": iso(int(time.time() * 1000))}
    try:
        uplink.check(beat)
        print(f"uplink {uplink.target}: ok (the server took a heartbeat and answered it)")
    except IronwatchError as exc:
        failures += 1
        print(f"uplink {uplink.target}: {exc}")
    finally:
        uplink.close()
    if failures:
        print(f"{failures} problem(s) found", file=sys.stderr)
    return 1 if failures else 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print sampled, sent, acknowledged, buffered, dropped and dead-lettered counts."""
    from ironwatch.gateway.agent import iso
    from ironwatch.gateway.outbox import identity, open_outbox

    config: gwconfig.GatewayConfig | None = None
    if args.outbox is not None:
        path = args.outbox
        gateway, site = identity(path)
    else:
        config = _load(args)
        path, gateway, site = config.buffer_path, config.gateway, config.site
        if not path.exists():
            raise ConfigError("buffer.path", f"{path} does not exist yet: the gateway has not run")
    max_bytes = config.buffer_max_bytes if config is not None else gwconfig.GatewayConfig.buffer_max_bytes
    outbox = open_outbox(path, gateway=gateway, site=site, max_bytes=max_bytes)
    counts: dict[str, Any] = dict(outbox.counts().to_dict())
    # A new outbox sends nothing until the server has said which batch numbers it holds.
    counts["numbering"] = "waiting for the server" if outbox.numbering_is_provisional else "settled"
    outbox.close()
    counts["oldest_buffered_ts"] = iso(counts.pop("oldest_buffered_ms")) or "-"
    # Whether it runs is asked of its metrics endpoint, whose address only the config knows.
    counts["is_running"] = _is_running(config) if config is not None else None
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"gateway {gateway} (site {site}), outbox {path}")
    if counts["is_running"] is None:
        counts["is_running"] = "unknown (give --config to ask its metrics endpoint)"
    for key, value in counts.items():
        print(
            f"  {key:<20} {value:,}"
            if isinstance(value, int) and not isinstance(value, bool)
            else f"  {key:<20} {value}"
        )
    return 0


def _is_running(config: gwconfig.GatewayConfig) -> bool:
    if not config.metrics_port:
        return False
    try:
        with urllib.request.urlopen(f"http://{config.metrics_host}:{config.metrics_port}/metrics", timeout=1):
            return True
    except OSError:
        return False


_INIT = """# ironwatch gateway configuration (ironwatch gateway --config gateway.toml).
# Relative paths are relative to this file. Check it with: ironwatch gateway check --config gateway.toml

[gateway]
id = "{gateway}"
site = "{site}"
heartbeat_interval_s = 30      # buffer depth, last batch and sensor status go to the server this often

[uplink]
url = "{uplink}"   # http(s)://SERVER:PORT, or mqtt(s)://BROKER:PORT
{credentials}
timeout_s = 10
backoff_min_s = 0.5            # after a failure, wait between backoff_min_s and an exponentially
backoff_max_s = 30             # growing bound (at most backoff_max_s), with jitter
in_flight = 4                  # batches on their way at once while a backlog drains

[buffer]
path = "outbox.db"             # the durable store-and-forward queue (SQLite)
max_bytes = 1073741824         # when full, the oldest readings are dropped (and counted)
dead_letter = "outbox-dead.jsonl"   # batches the server refused, with its answer

[batch]
max_readings = 5000            # a batch holds at most this many readings...
interval_s = 1.0               # ...and leaves at least this often

[metrics]
host = "127.0.0.1"
port = 9108                    # Prometheus metrics at http://host:port/metrics (0 turns them off)

"""
