"""One run of the demo beside the server: the link, the gateway with its simulator, and the watch.

The gateway is the real one (:class:`ironwatch.gateway.agent.Gateway`), built from a configuration
document as ``gateway.toml`` would give it, with its outbox and the simulator's ground-truth log in
``DATA_DIR/gateway/``. Its uplink points at the demo's :class:`~ironwatch.demo.link.Link`, which
relays to the server and is cut now and then.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import threading
import time
from typing import Any

from ironwatch.config import Settings
from ironwatch.demo.banner import Facts, banner
from ironwatch.demo.link import Link
from ironwatch.demo.watch import Analyst, Backfill, Outages, Watch, human
from ironwatch.errors import ConfigError, IronwatchError
from ironwatch.gateway.agent import Gateway, iso
from ironwatch.gateway.config import parse
from ironwatch.gateway.outbox import Counts
from ironwatch.gateway.simulator import METRICS

log = logging.getLogger(__name__)

TENANT = "demo"
SITE = "hall-a"
GATEWAY = "gw-hall-a"
#: The simulator's defaults, restated for the banner and the estimate of the history's size.
RATE_PER_MIN = 30.0
DELIVERY = 0.5
#: Seconds the gateway spends handing its buffer to the server when the demo stops.
STOP_DRAIN_S = 15.0
#: Bytes of outbox on disk: hours of live readings through an outage. The backfill fills at most
#: half of it, which keeps the queue ahead of the live readings to seconds of drain.
BUFFER_BYTES = 128 << 20


@dataclasses.dataclass(frozen=True)
class Options:
    """The demo's own flags."""

    sensors: int = 550
    backfill_days: float = 3.0
    backfill_rate_per_min: float = 2.0
    outage_every_s: float = 240.0
    outage_s: float = 30.0

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the flag of a value that cannot work."""
        if self.sensors < 1:
            raise ConfigError("--sensors", "the demo needs at least one sensor")
        if self.backfill_days < 0:
            raise ConfigError("--backfill-days", "must be 0 (no history) or more")
        if not 0.1 <= self.backfill_rate_per_min <= RATE_PER_MIN:
            raise ConfigError("--backfill-rate", f"must be between 0.1 and {RATE_PER_MIN:g} per minute")
        if self.outage_every_s < 0 or self.outage_s <= 0:
            raise ConfigError(
                "--outage-every", "outages need --outage-every >= 0 (0: none) and --outage-s > 0"
            )
        if self.outage_every_s and self.outage_s >= self.outage_every_s:
            raise ConfigError("--outage-s", "an outage must be shorter than the time between two")


class Session:
    """Runs the link, the gateway and the watch until ``stop`` is set."""

    def __init__(self, settings: Settings, options: Options, *, analyst_key: str, gateway_key: str) -> None:
        self.settings = settings
        self.options = options
        self.analyst_key = analyst_key
        self.gateway_key = gateway_key
        self.tenant, self.site, self.gateway_id = TENANT, SITE, GATEWAY
        self.folder = settings.data_dir / "gateway"
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.gateway: Gateway | None = None
        self.first: Counts | None = None
        self.last: Counts | None = None
        self.started_ms = int(time.time() * 1000)

    def config(self, uplink_url: str) -> dict[str, Any]:
        """The gateway's configuration, as the tables of a ``gateway.toml``."""
        return {
            "gateway": {"id": self.gateway_id, "site": self.site, "heartbeat_interval_s": 10.0},
            # Short backoff: the link comes back within seconds of an outage's end, so should the drain.
            "uplink": {
                "url": uplink_url,
                "key": self.gateway_key,
                "backoff_min_s": 0.2,
                "backoff_max_s": 2.0,
            },
            "buffer": {"path": "outbox.db", "max_bytes": BUFFER_BYTES},
            "batch": {"max_readings": 20_000, "interval_s": 1.0},
            "metrics": {"port": 0},  # the server's /metrics is the one to look at
            "sources": [
                {
                    "type": "simulator",
                    "sensors": self.options.sensors,
                    "faults": "default",
                    "ground_truth": "simulator-faults.jsonl",
                    "backfill_days": self.options.backfill_days,
                    "backfill_rate_per_min": self.options.backfill_rate_per_min,
                }
            ],
        }

    def run(self, url: str, *, duration_s: float | None) -> None:
        """Run until ``stop`` (or ``duration_s`` after ready); errors end up in ``error``."""
        link = Link("127.0.0.1", int(url.rsplit(":", 1)[1]))
        thread: threading.Thread | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.gateway = gateway = Gateway(
                parse(self.config(link.url), self.folder),
                backfill_days=self.options.backfill_days,
                stop_drain_s=STOP_DRAIN_S,
            )
            self.first = gateway.outbox.counts()
            history = self._history(gateway)
            thread = threading.Thread(target=self._run_gateway, name="demo-gateway")
            thread.start()
            analyst = Analyst(url, self.analyst_key)
            watch = Watch(
                gateway.outbox,
                gateway.backfill_progress,
                link,
                Outages(self.options.outage_every_s, self.options.outage_s),
                lambda: self._is_visible(analyst),
                backfill=history,
                say=_say,
            )
            self._watch(watch, url, duration_s)
            watch.heal()
        except (IronwatchError, OSError) as exc:
            self.error = exc
            log.debug("demo stopped", exc_info=True)
        except Exception as exc:  # a bug: keep the traceback, and still stop the demo cleanly
            self.error = exc
            log.exception("demo failed")
        finally:
            link.heal()
            if self.gateway is not None:
                self.gateway.stop.set()
            if thread is not None:
                thread.join()
            link.close()
            if self.gateway is not None:
                self.last = self.gateway.outbox.counts()
                self.gateway.outbox.close()

    def _run_gateway(self) -> None:
        assert self.gateway is not None
        try:
            self.gateway.run()
        except Exception as exc:
            self.error = exc
            log.exception("the demo's gateway failed")
        finally:
            self.stop.set()

    def _watch(self, watch: Watch, url: str, duration_s: float | None) -> None:
        deadline: float | None = None
        while not self.stop.wait(0.5):
            if not watch.tick():
                continue
            if deadline is None:
                _say(banner(self._facts(url)))
                deadline = time.monotonic() + (duration_s if duration_s is not None else float("inf"))
            if time.monotonic() >= deadline:
                return

    def _history(self, gateway: Gateway) -> Backfill | None:
        """What the backfill will send, said in one line; None when there is none (left) to send."""
        days, rate = self.options.backfill_days, self.options.backfill_rate_per_min
        progress = gateway.backfill_progress()
        if progress is not None:
            start_ms, end_ms = progress.start_ms, progress.end_ms
            if progress.is_stored:  # the gateway never backfills a second time
                _say(f"history: backfilled by an earlier run ({iso(start_ms)} to {iso(end_ms)})")
                return None
            _say(f"history: resuming the backfill an earlier run began ({iso(start_ms)} to {iso(end_ms)})")
        elif days <= 0:
            return None
        else:
            end_ms = int(time.time() * 1000)
            start_ms = end_ms - round(days * 86_400_000)
        minutes = (end_ms - start_ms) / 60_000
        expected = round(self.options.sensors * len(METRICS) * rate * minutes * DELIVERY)
        _say(
            f"history: {minutes / 1440:g} days at {rate:g} readings per minute per metric, about "
            f"{human(expected)} readings; the gateway sends them while the live readings flow"
        )
        return Backfill(start_ms, end_ms, expected)

    def _is_visible(self, analyst: Analyst) -> bool:
        since = iso(self.started_ms)
        sql = (
            f"SELECT count(*) FROM readings WHERE gateway = '{self.gateway_id}' AND received_at >= '{since}'"
        )
        try:
            return bool(analyst.rows(sql)[0][0])
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.info("demo: the lake cannot be queried yet: %s", exc)
            return False

    def _facts(self, url: str) -> Facts:
        days = self.options.backfill_days
        every, length = self.options.outage_every_s, self.options.outage_s
        return Facts(
            url=url,
            analyst_key=self.analyst_key,
            data_dir=self.settings.data_dir,
            tenant=self.tenant,
            site=self.site,
            gateway=self.gateway_id,
            sensors=self.options.sensors,
            metrics=len(METRICS),
            rate_per_min=RATE_PER_MIN,
            history=(
                f"{days:g} days at {self.options.backfill_rate_per_min:g} readings per minute per metric"
                if days > 0
                else "none (--backfill-days 0)"
            ),
            outages=f"the uplink is cut for {length:g} s every {every:g} s" if every > 0 else "none",
            flush_interval_s=float(self.settings.lake.flush_interval_s),
        )

    def summary(self) -> str:
        """The last line: what this run did, and what the gateway still holds."""
        where = self.settings.data_dir
        if self.first is None or self.last is None:
            return f"demo stopped: the data stays in {where}"
        first, last = self.first, self.last
        return (
            f"demo stopped: {last.sampled - first.sampled:,} readings sampled and "
            f"{last.acknowledged - first.acknowledged:,} acknowledged this run; in all {last.sampled:,} "
            f"sampled, {last.acknowledged:,} acknowledged, {last.dropped:,} dropped, {last.buffered:,} "
            f"still buffered (sent on the next run); the data stays in {where}"
        )


def _say(text: str) -> None:
    print(text, flush=True)
