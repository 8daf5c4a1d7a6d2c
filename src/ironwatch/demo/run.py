"""``ironwatch demo``: the server on a data directory, fed by a synthetic site, until Ctrl-C.

Each run reuses what the previous one left: the tenant ``demo``, the gateway ``gw-hall-a`` of site
``hall-a`` and the readings. API keys are shown only once, so every run creates a fresh analyst key
and gateway key and revokes the previous run's; ``DATA_DIR/demo-state.json`` keeps only their ids
and how far the feed got, never a secret. The feed continues the batch numbers the server has
already stored, and backfills the readings missed while the demo was off (at most 30 minutes).

Port: when the port comes from the default (8000) and is taken, the demo listens on a free port
instead and says so; a port asked for explicitly (flag, environment, file) that is taken is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ironwatch import lake
from ironwatch.config import Settings
from ironwatch.demo.feed import Feed, Link
from ironwatch.demo.site import METRICS, Site
from ironwatch.errors import ConfigError, IronwatchError, NotFound
from ironwatch.store import Store

log = logging.getLogger(__name__)

TENANT = "demo"
SITE = "hall-a"
GATEWAY = "gw-hall-a"
BACKFILL_S = 30 * 60
STATE_FILE = "demo-state.json"
#: Longest wait for the backfill to show in SQL before the examples are printed anyway.
VISIBLE_WAIT_S = 60.0


def run_demo(settings: Settings, *, sensors: int = 300, duration_s: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for ``duration_s`` seconds once it is ready); return the exit code."""
    if sensors < 1:
        raise ConfigError("--sensors", "the demo needs at least one sensor")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings = _choose_port(settings)
    state = _State.load(settings.data_dir / STATE_FILE)
    analyst_key, gateway_key = _prepare(settings, state)
    demo = _Demo(settings, state, Site(sensors), analyst_key, gateway_key, duration_s)
    return demo.run()


@dataclasses.dataclass
class _State:
    """What the demo remembers between runs (never a key secret)."""

    path: Path
    key_ids: list[str] = dataclasses.field(default_factory=list)
    fed_until_ms: int = 0

    @classmethod
    def load(cls, path: Path) -> _State:
        try:
            doc = json.loads(path.read_text())
            return cls(path, [str(k) for k in doc.get("key_ids", [])], int(doc.get("fed_until_ms", 0)))
        except FileNotFoundError:
            return cls(path)
        except (ValueError, TypeError, AttributeError):
            log.warning("demo: %s is unreadable; starting afresh", path)
            return cls(path)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key_ids": self.key_ids, "fed_until_ms": self.fed_until_ms}) + "\n")
        os.replace(tmp, self.path)


def _choose_port(settings: Settings) -> Settings:
    host, port = str(settings.server.host), int(settings.server.port)
    if port == 0 or _is_free(host, port):
        return settings
    if settings.origins.get("server.port", "default") != "default":
        raise ConfigError("server.port", f"port {port} on {host} is in use; pass --port 0 to take a free one")
    print(f"port {port} is in use, so the demo takes a free port (the URL is below)", flush=True)
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=0))


def _is_free(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError("server.host", f"cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _prepare(settings: Settings, state: _State) -> tuple[str, str]:
    """Ensure the tenant and gateway exist; replace last run's keys; return (analyst, gateway) secrets."""
    store = Store(settings.store_url)
    try:
        try:
            tenant = store.tenant(TENANT)
        except NotFound:
            tenant = store.create_tenant(TENANT, settings.root_url(TENANT))
        lake.open_root(tenant.root_url)
        for key_id in state.key_ids:
            # NotFound: the metadata database was replaced since; there is nothing to revoke.
            with contextlib.suppress(NotFound):
                store.revoke_key(key_id, tenant=TENANT)
        analyst, analyst_secret = store.create_key(TENANT, "analyst", label="demo: analyst")
        feed, feed_secret = store.create_key(
            TENANT, "gateway", site=SITE, gateway=GATEWAY, label="demo: feed"
        )
        store.add_gateway(TENANT, GATEWAY, SITE)
    finally:
        store.close()
    state.key_ids = [analyst.id, feed.id]
    state.save()
    return analyst_secret, feed_secret


class _Demo:
    """The server in the main thread, the feed in another; both stop on Ctrl-C or at the deadline."""

    def __init__(
        self,
        settings: Settings,
        state: _State,
        site: Site,
        analyst_key: str,
        gateway_key: str,
        duration_s: float | None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.site = site
        self.analyst_key = analyst_key
        self.gateway_key = gateway_key
        self.duration_s = duration_s
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.feed: Feed | None = None
        self._lock = threading.Lock()
        self._stop_requested = False

    def run(self) -> int:
        from ironwatch.web.server import serve

        handlers = self._catch_signals()
        try:
            serve(self.settings, on_ready=self._start)
        finally:
            self.stop.set()
            if self.thread is not None:
                self.thread.join()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        if self.feed is not None:
            print(
                f"demo stopped: {self.feed.readings_sent:,} readings in {self.feed.batches_sent:,} batches "
                f"this run; the data stays in {self.settings.server.data_dir}",
                flush=True,
            )
        if self.error is not None:
            print(f"error: {self.error}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _catch_signals(self) -> dict[int, Any]:
        # uvicorn handles SIGINT and SIGTERM while it serves and passes them on to these handlers
        # once it has shut down; they only end the demo, so a stop is never a traceback.
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, lambda *_: self.stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(self) -> None:
        """Ask the server in the main thread to stop, as Ctrl-C would (once)."""
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
        self.stop.set()
        os.kill(os.getpid(), signal.SIGTERM)

    def _start(self, url: str) -> None:
        # Called inside the server's event loop: start the feed and return at once.
        self.thread = threading.Thread(target=self._feed, args=(url,), name="demo-feed")
        self.thread.start()

    def _feed(self, url: str) -> None:
        try:
            self._feed_until_stopped(url)
        except (IronwatchError, OSError) as exc:
            self.error = exc
            log.debug("demo feed stopped", exc_info=True)
        except Exception as exc:  # a bug: keep the traceback, and still stop the demo cleanly
            self.error = exc
            log.exception("demo feed failed")
        finally:
            # Whatever ended the feed (the deadline, an error, a Ctrl-C that came before the
            # server was up), the server must not go on without it.
            self.request_stop()

    def _feed_until_stopped(self, url: str) -> None:
        analyst, sender = Link(url, self.analyst_key), Link(url, self.gateway_key)
        try:
            self._backfill_then_feed(url, analyst, sender)
        finally:
            analyst.close()
            sender.close()

    def _backfill_then_feed(self, url: str, analyst: Link, sender: Link) -> None:
        now_ms = int(time.time() * 1000)
        since_ms = max(now_ms - BACKFILL_S * 1000, min(self.state.fed_until_ms, now_ms))
        self.feed = feed = Feed(
            sender,
            self.site,
            site_id=SITE,
            gateway=GATEWAY,
            first_batch=_next_batch(analyst),
            fed_until_ms=since_ms,
            on_sent=self._sent,
        )
        backlog = len(self.site.timestamps(since_ms, now_ms)) * self.site.readings_per_period
        what = (
            "the last 30 minutes" if since_ms <= now_ms - BACKFILL_S * 1000 else "the time since the last run"
        )
        print(
            f"ironwatch demo: site {SITE}, {len(self.site.sensors)} sensors x {len(METRICS)} metrics every "
            f"{self.site.period_ms / 1000:g} s; sending {what} first ({backlog:,} readings)...",
            flush=True,
        )
        started = time.monotonic()
        if not feed.send_until(now_ms, self.stop):
            return
        log.info("demo: backfill of %d readings took %.1f s", feed.readings_sent, time.monotonic() - started)
        print(_banner(self, url), flush=True)
        ready = _Ready(self, analyst, feed.fed_until_ms)
        feed.run(self.stop, on_tick=ready.check)

    def _sent(self, batch: int, fed_until_ms: int) -> None:
        self.state.fed_until_ms = fed_until_ms
        self.state.save()


class _Ready:
    """Says when the backfill shows in SQL; ``duration_s`` counts from then."""

    def __init__(self, demo: _Demo, analyst: Link, backfill_end_ms: int) -> None:
        self.demo = demo
        self.analyst = analyst
        self.backfill_end_ms = backfill_end_ms
        self.since = time.monotonic()
        self.deadline: float | None = None

    def check(self) -> None:
        """Called after every batch of the live feed."""
        if self.deadline is None:
            if self._is_visible():
                print("the readings sent so far are visible to SQL now", flush=True)
            elif time.monotonic() - self.since < VISIBLE_WAIT_S:
                return
            duration_s = self.demo.duration_s
            self.deadline = time.monotonic() + (duration_s if duration_s is not None else float("inf"))
        if time.monotonic() >= self.deadline:
            self.demo.request_stop()

    def _is_visible(self) -> bool:
        sql = f"SELECT epoch_ms(max(ts)) AS last FROM readings WHERE gateway = '{GATEWAY}'"
        try:
            answer = self.analyst.json("POST", "/api/v1/query", {"sql": sql, "format": "json"})
        except (OSError, IronwatchError) as exc:
            log.info("demo: the lake cannot be queried yet: %s", exc)
            return False
        last = answer["rows"][0][0]
        return last is not None and int(last) >= self.backfill_end_ms


def _next_batch(analyst: Link) -> int:
    """The batch number after the last one the server holds for the demo gateway."""
    for gateway in analyst.json("GET", "/api/v1/gateways")["gateways"]:
        if gateway["gateway"] == GATEWAY and gateway["received_batches"]:
            return int(gateway["received_batches"][-1][1]) + 1
    return 1


def _command() -> str:
    """How the user can call ironwatch from here: on the PATH, or the script beside this Python."""
    script = Path(sys.executable).with_name("ironwatch")
    found = shutil.which("ironwatch")
    if found and (not script.exists() or Path(found).resolve() == script.resolve()):
        return "ironwatch"
    if script.exists():
        relative = os.path.relpath(script)
        return relative if not relative.startswith("..") else str(script)
    return "ironwatch"


def _banner(demo: _Demo, url: str) -> str:
    data_dir = demo.settings.server.data_dir
    cmd = _command()
    sql = (
        "SELECT metric, count(*) AS readings, round(avg(value), 2) AS mean "
        "FROM readings GROUP BY metric ORDER BY metric"
    )
    worn = (
        "SELECT sensor, round(avg(value), 2) AS vibration FROM readings "
        "WHERE metric = 'vibration_rms_x_mm_s' AND ts > now() - INTERVAL 5 MINUTE "
        "GROUP BY sensor ORDER BY vibration DESC LIMIT 5"
    )
    lines = [
        "",
        f"ironwatch demo is running: tenant {TENANT}, site {SITE}, gateway {GATEWAY}, a batch every "
        f"{demo.feed.interval_s if demo.feed else 2:g} s",
        f"  URL          {url}",
        f"  analyst key  {demo.analyst_key}   (new on every run; shown only here)",
        f"  data         {data_dir}",
    ]
    lines.append(
        f"  SQL sees a reading within {demo.settings.lake.flush_interval_s:g} s of its acknowledgement "
        "(lake.flush_interval_s)"
    )
    lines += [
        "",
        "Try, in another terminal:",
        f"  export IRONWATCH_URL={url}",
        f"  export IRONWATCH_KEY={demo.analyst_key}",
        '  curl -s -H "Authorization: Bearer $IRONWATCH_KEY" -H "Content-Type: application/json" \\',
        f'    -d \'{{"sql": "{sql}", "format": "csv"}}\' \\',
        "    $IRONWATCH_URL/api/v1/query",
        f'  {cmd} query --data-dir {data_dir} --tenant {TENANT} "{worn}"',
        f'  {cmd} query "SELECT count(*) AS readings, count(DISTINCT sensor) AS sensors FROM readings"',
        "  curl -s $IRONWATCH_URL/metrics | grep '^ironwatch_readings.*_total'",
        f"  API documentation: {url}/api/v1/docs",
        "",
        "Ctrl-C stops the demo; the data stays and the next run continues where this one stopped.",
    ]
    return "\n".join(lines)
