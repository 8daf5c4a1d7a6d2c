"""What a running server is made of, built once from the settings and shared by the routes."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ironwatch import lake, live
from ironwatch.config import Settings
from ironwatch.ingest import Metrics, Pipeline, health_report
from ironwatch.model import utc_now_us
from ironwatch.store import Store
from ironwatch.web.auth import Authenticator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    """The server's parts; started and stopped by the app's lifespan."""

    settings: Settings
    store: Store
    metrics: Metrics
    pipeline: Pipeline
    auth: Authenticator
    mqtt: Any = None
    series: Any = None  # live.Series
    streams: Any = None  # live.Streams
    jobs: Any = None  # lake.jobs.Runner
    sandboxes: Any = None  # lake.Pool: the sandboxed DuckDBs of analysts' SQL

    @classmethod
    def build(cls, settings: Settings) -> Services:
        store = Store(settings.store_url)
        metrics = Metrics()
        recent = live.Recent(int(settings.live.recent_max_readings))
        bus = live.Bus(
            recent,
            max_readings=int(settings.live.queue_readings),
            drop_after_s=float(settings.live.drop_after_s),
        )
        pipeline = Pipeline(settings, store, metrics, bus)
        live.watch(metrics.registry, bus)
        services = cls(
            settings, store, metrics, pipeline, Authenticator(store, float(settings.auth.key_cache_s))
        )
        services.series = live.Series(settings, pipeline.root_of, recent, utc_now_us)
        services.streams = live.Streams(bus, settings, utc_now_us)
        services.sandboxes = lake.Pool(
            idle=int(settings.query.idle_sandboxes),
            idle_per_root=int(settings.query.idle_sandboxes_per_tenant),
            idle_s=float(settings.query.idle_sandbox_s),
        )
        lake.pool.watch(metrics.registry, services.sandboxes)
        services.jobs = lake.jobs.Runner(
            settings,
            store,
            pipeline.root_of,
            tables_of=lambda tenant: health_report.sql_tables(store, tenant, pipeline.health),
            pool=services.sandboxes,
        )
        return services

    def start(self) -> None:
        self.pipeline.start()
        self.jobs.start()
        if self.settings.mqtt.url:
            from ironwatch.ingest.mqtt import Subscriber

            self.mqtt = Subscriber(self.settings, self.pipeline)
            self.mqtt.start()

    def stop(self) -> None:
        """Stop every part, once: later calls do nothing."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        if self.mqtt is not None:
            self.mqtt.stop()
        self.jobs.stop()
        self.sandboxes.close()
        self.pipeline.stop()
        self.pipeline.bus.close()
        self.series.close()
        self.store.close()
