"""The health tracker: what each gateway and sensor last did, kept in memory from the ingest path.

The ingest path only queues each durable batch (a ``deque.append``, well under a microsecond); the
tracker's own thread folds the queue into per-site arrays every ``FOLD_INTERVAL_S`` (and any reader
folds it first, so a report includes every acknowledged batch). Heartbeats are applied at once.

What changed is saved to the metadata database every ``health.persist_interval_s`` and at a
graceful stop. After ``kill -9``, the batches still in the write-ahead log are replayed into the
tracker (:meth:`Tracker.replay`); each gateway's set of batches already counted keeps a batch that
was both saved and replayed from being counted twice.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ironwatch.config import Settings
from ironwatch.errors import IronwatchError
from ironwatch.ingest.flusher import load_checkpoint
from ironwatch.ingest.ledger import Ledger, RangeSet
from ironwatch.ingest.sitestats import N_BUCKETS, NEVER, SiteStats
from ironwatch.store import SavedGateway, SavedSensor, Store, load_health, save_health

log = logging.getLogger(__name__)

#: How often the tracker's thread folds queued batches into its arrays.
FOLD_INTERVAL_S = 0.1

#: A queued contact: tenant, site, runs of ``(gateway, batch or None, rows)`` in the order of the
#: readings (one run per batch; a contact without a batch has none), the readings, when.
_Run = tuple[str, int | None, int]
_Item = tuple[str, str, list[_Run], pa.Table | None, int]


def _now_us() -> int:
    return time.time_ns() // 1000


def _opt(value: int) -> int | None:
    return None if value in (NEVER, np.iinfo(np.int64).max) else int(value)


@dataclasses.dataclass
class GatewayState:
    """What the tracker knows of one gateway (times in epoch µs)."""

    site: str
    last_seen_us: int | None = None
    last_batch_at_us: int | None = None
    heartbeat: dict[str, Any] | None = None
    heartbeat_at_us: int | None = None
    observed: RangeSet = dataclasses.field(default_factory=RangeSet)
    is_dirty: bool = False

    def seen(self, at_us: int) -> None:
        if self.last_seen_us is None or at_us > self.last_seen_us:
            self.last_seen_us = at_us
        self.is_dirty = True


@dataclasses.dataclass(frozen=True)
class SensorState:
    """A copy of one sensor's statistics, for reports (times in epoch µs)."""

    site: str
    sensor: str
    gateway: str | None
    first_ts_us: int | None
    last_ts_us: int | None
    last_received_us: int | None
    readings: int
    rate_per_min: float | None  # None while less than one bucket of time has been watched


class Tracker:
    """Gateway and sensor health of every tenant of one server; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ledger: Ledger | None = None,
        *,
        clock: Callable[[], int] = _now_us,
    ) -> None:
        self.settings = settings.health
        self.store = store
        self.ledger = ledger
        self.clock = clock
        self.bucket_us = max(1, int(float(self.settings.rate_window_s) * 1e6) // N_BUCKETS)
        self._queue: collections.deque[_Item] = collections.deque()
        self._lock = threading.RLock()
        self._gateways: dict[tuple[str, str], GatewayState] = {}
        self._sites: dict[tuple[str, str], SiteStats] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def saved(cls, settings: Settings, store: Store) -> Tracker:
        """The health as last saved, with the batch ledger of the last checkpoint: for reading it
        without a running server (a local query)."""
        ledger = Ledger()
        ledger.load(load_checkpoint(settings.data_dir / "wal")["ledger"])
        tracker = cls(settings, store, ledger)
        tracker.load()
        return tracker

    # the ingest path -----------------------------------------------------------------------------
    def batch(self, tenant: str, gateway: str, batch: int, site: str, readings: pa.Table) -> None:
        """Note a durable batch; called for every acknowledged batch, so it only queues it."""
        self._queue.append((tenant, site, [(gateway, batch, readings.num_rows)], readings, self.clock()))

    def batches(self, tenant: str, site: str, runs: Sequence[_Run], readings: pa.Table) -> None:
        """Note durable batches of one site written together: ``readings`` holds theirs in order."""
        self._queue.append((tenant, site, list(runs), readings, self.clock()))

    def contact(self, tenant: str, gateway: str, site: str, at_us: int | None = None) -> None:
        """Note that a gateway was heard from (a batch sent again, already stored)."""
        self._queue.append(
            (tenant, site, [(gateway, None, 0)], None, self.clock() if at_us is None else at_us)
        )

    def heartbeat(self, tenant: str, beat: dict[str, Any], at_us: int | None = None) -> None:
        """Keep a checked heartbeat as the gateway's latest state."""
        at_us = self.clock() if at_us is None else at_us
        with self._lock:
            state = self._gateway(tenant, beat["gateway"], beat["site"])
            state.heartbeat = beat
            state.heartbeat_at_us = at_us
            state.seen(at_us)

    def replay(
        self, tenant: str, gateway: str, batch: int, site: str, readings: pa.Table, received_at_us: int
    ) -> None:
        """Fold a batch recovered from the write-ahead log, unless it was counted before the crash."""
        with self._lock:
            self._fold([(tenant, site, [(gateway, batch, readings.num_rows)], readings, received_at_us)])

    def catch_up(self) -> None:
        """Fold every queued batch now."""
        with self._lock:
            items: list[_Item] = []
            while self._queue:
                items.append(self._queue.popleft())
            if items:
                self._fold(items)

    def _gateway(self, tenant: str, gateway: str, site: str) -> GatewayState:
        state = self._gateways.get((tenant, gateway))
        if state is None:
            state = self._gateways[(tenant, gateway)] = GatewayState(site)
        return state

    def _fold(self, items: list[_Item]) -> None:
        by_site: dict[tuple[str, str], list[tuple[pa.Table, list[tuple[str, int]], int]]] = {}
        for tenant, site, runs, readings, received_us in items:
            is_new = [self._observe(tenant, site, gateway, batch, received_us) for gateway, batch, _ in runs]
            if readings is None or not readings.num_rows or not any(is_new):
                continue
            target = by_site.setdefault((tenant, site), [])
            if all(is_new):
                target.append((readings, [(gateway, rows) for gateway, _, rows in runs], received_us))
                continue
            offset = 0  # some batches were counted before: only the others' readings
            for (gateway, _, rows), new in zip(runs, is_new, strict=True):
                if new:
                    target.append((readings.slice(offset, rows), [(gateway, rows)], received_us))
                offset += rows
        for key, batches in by_site.items():
            stats = self._sites.get(key)
            if stats is None:
                stats = self._sites[key] = SiteStats(self.bucket_us)
            try:
                stats.fold(batches)
            except (pa.ArrowException, ValueError) as exc:
                log.error("health: cannot count %d batches of site %s: %s", len(batches), key[1], exc)

    def _observe(self, tenant: str, site: str, gateway: str, batch: int | None, received_us: int) -> bool:
        """Note a gateway's contact; whether ``batch`` is one not counted before."""
        state = self._gateway(tenant, gateway, site)
        state.seen(received_us)
        if batch is None or batch in state.observed:
            return False  # a batch sent again, or replayed after it was counted and saved
        state.observed.add(batch)
        if state.last_batch_at_us is None or received_us > state.last_batch_at_us:
            state.last_batch_at_us = received_us
        return True

    # reading -------------------------------------------------------------------------------------
    def gateways(self, tenant: str) -> dict[str, GatewayState]:
        """Copies of the states of a tenant's gateways, by gateway id."""
        self.catch_up()
        with self._lock:
            return {
                gateway: dataclasses.replace(state, observed=RangeSet(state.observed.ranges()))
                for (t, gateway), state in self._gateways.items()
                if t == tenant
            }

    def received(self, tenant: str, gateway: str) -> RangeSet:
        """Batch numbers of a gateway that are stored (from the ledger when the tracker has one)."""
        if self.ledger is not None:
            return self.ledger.ranges(tenant, gateway)
        with self._lock:
            state = self._gateways.get((tenant, gateway))
            return RangeSet(state.observed.ranges() if state else [])

    def sensors(self, tenant: str, now_us: int | None = None) -> list[SensorState]:
        """Statistics of every sensor of a tenant, with its rate over the window ending ``now_us``."""
        now_us = self.clock() if now_us is None else now_us
        self.catch_up()
        out: list[SensorState] = []
        with self._lock:
            for (t, site), stats in self._sites.items():
                if t != tenant or not len(stats):
                    continue
                counts, span_us = stats.window(now_us)
                watched = span_us >= self.bucket_us
                rates = np.where(watched, counts * 60e6 / np.maximum(span_us, 1), np.nan)
                for row, sensor in enumerate(stats.names):
                    code = int(stats.gateway[row])
                    rate = float(rates[row])
                    out.append(
                        SensorState(
                            site,
                            sensor,
                            stats.gateway_names[code] if code >= 0 else None,
                            _opt(stats.first_ts[row]),
                            _opt(stats.last_ts[row]),
                            _opt(stats.last_received[row]),
                            int(stats.readings[row]),
                            None if np.isnan(rate) else rate,
                        )
                    )
        return out

    # persistence ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the saved state, and the latest heartbeats kept with the registered gateways."""
        gateways, sensors = load_health(self.store)
        with self._lock:
            for g in gateways:
                state = self._gateway(g.tenant, g.gateway, g.site)
                state.last_seen_us, state.last_batch_at_us = g.last_seen_us, g.last_batch_at_us
                state.observed = RangeSet(g.observed_batches)
            for tenant in self.store.tenants():
                for registered in self.store.gateways(tenant.name):
                    if registered.last_heartbeat is None or registered.last_seen_at is None:
                        continue
                    state = self._gateway(tenant.name, registered.gateway, registered.site)
                    state.heartbeat = registered.last_heartbeat
                    state.heartbeat_at_us = int(registered.last_seen_at.timestamp() * 1e6)
                    state.seen(state.heartbeat_at_us)
            for s in sensors:
                stats = self._sites.get((s.tenant, s.site))
                if stats is None:
                    stats = self._sites[(s.tenant, s.site)] = SiteStats(self.bucket_us)
                stats.restore(
                    s.sensor, s.gateway, s.first_ts_us, s.last_ts_us, s.last_received_us, s.readings, s.window
                )
            for state in self._gateways.values():
                state.is_dirty = False

    def persist(self) -> None:
        """Save what changed since the last save; on a database error it stays to be saved next time."""
        self.catch_up()
        now_us = self.clock()
        with self._lock:
            gateways = [
                SavedGateway(t, g, s.site, s.last_seen_us, s.last_batch_at_us, s.observed.ranges())
                for (t, g), s in self._gateways.items()
                if s.is_dirty
            ]
            sensors: list[SavedSensor] = []
            marked: list[tuple[SiteStats, np.ndarray]] = []
            for (tenant, site), stats in self._sites.items():
                rows = np.flatnonzero(stats.dirty[: len(stats)])
                if not len(rows):
                    continue
                marked.append((stats, rows))
                stats.dirty[rows] = False
                for row in rows.tolist():
                    code = int(stats.gateway[row])
                    sensors.append(
                        SavedSensor(
                            tenant,
                            site,
                            stats.names[row],
                            stats.gateway_names[code] if code >= 0 else None,
                            _opt(stats.first_ts[row]),
                            _opt(stats.last_ts[row]),
                            _opt(stats.last_received[row]),
                            int(stats.readings[row]),
                            stats.saved_window(row, now_us),
                        )
                    )
            for state in self._gateways.values():
                state.is_dirty = False
        try:
            save_health(self.store, gateways, sensors)
        except IronwatchError:
            with self._lock:
                for g in gateways:
                    self._gateways[(g.tenant, g.gateway)].is_dirty = True
                for stats, rows in marked:
                    stats.dirty[rows] = True
            raise

    # life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread that folds queued batches and saves the state periodically."""
        self._thread = threading.Thread(target=self._run, name="health-tracker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval_s = float(self.settings.persist_interval_s)
        saved_at = time.monotonic()
        while not self._stop.wait(FOLD_INTERVAL_S):
            self.catch_up()
            if time.monotonic() - saved_at >= interval_s:
                saved_at = time.monotonic()
                try:
                    self.persist()
                except IronwatchError as exc:
                    log.error("health: cannot save gateway and sensor health (trying again): %s", exc)

    def stop(self) -> None:
        """Stop the thread and save the state one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.persist()
        except IronwatchError as exc:
            log.error("health: cannot save gateway and sensor health at stop: %s", exc)
