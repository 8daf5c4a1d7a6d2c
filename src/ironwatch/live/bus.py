"""The live bus: acknowledged readings fanned out, in process, to the streams that listen.

The ingest pipeline publishes each batch's good readings once the batch is durable, from the thread
that completes the acknowledgement. Publishing must cost next to nothing there: the recent buffer
keeps a reference to the batch's table (no copy), and with no listener in the batch's tenant that is
all; with listeners, the batch is appended to a backlog for the bus's own thread. That thread
matches a batch against each listener's site with one string comparison (a batch comes from one
site); sensor and metric filters are one vectorised Arrow mask per distinct filter (none when the
batch lacks the sensor), never a Python loop per reading. Each listener has a bounded queue: a listener that
falls behind skips readings and is told how many, and one that stops reading for ``drop_after_s``
is dropped. Neither ever slows ingest.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ironwatch.live.recent import Recent

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Filter:
    """What a listener wants: one site, optionally one sensor and one metric."""

    site: str
    sensor: str | None = None
    metric: str | None = None

    def select(self, readings: pa.Table) -> pa.Table:
        """The readings of a batch from this filter's site that match its sensor and metric."""
        mask = None
        if self.sensor is not None:
            mask = pc.equal(readings["sensor"], self.sensor)
        if self.metric is not None:
            by_metric = pc.equal(readings["metric"], self.metric)
            mask = by_metric if mask is None else pc.and_(mask, by_metric)
        return readings if mask is None else readings.filter(mask)


class Subscription:
    """One listener's queue of matching readings, bounded by ``max_readings``."""

    def __init__(self, tenant: str, filter: Filter, max_readings: int, drop_after_s: float) -> None:
        self.tenant = tenant
        self.filter = filter
        self.max_readings = max_readings
        self.drop_after_s = drop_after_s
        self._lock = threading.Lock()
        self._chunks: list[pa.Table] = []
        self._queued = 0
        self._skipped = 0
        self._full_since: float | None = None
        #: Readings skipped over this listener's life.
        self.skipped_total = 0
        #: Set when the bus dropped this listener for not reading, or it unsubscribed.
        self.is_closed = False

    def offer(self, readings: pa.Table) -> bool:
        """Queue matching readings, or count them as skipped when the queue is full.

        Returns ``False`` once the queue has been full for ``drop_after_s``: the listener is stuck.
        """
        n = readings.num_rows
        if n == 0:
            return True
        with self._lock:
            if self._queued + n <= self.max_readings:
                self._chunks.append(readings)
                self._queued += n
                return True
            self._skipped += n
            self.skipped_total += n
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
            return now - self._full_since < self.drop_after_s

    def skip(self, n: int) -> None:
        """Count ``n`` readings as skipped without offering them (the bus itself fell behind)."""
        with self._lock:
            self._skipped += n
            self.skipped_total += n

    def take(self) -> tuple[pa.Table | None, int]:
        """Everything queued since the last call (or ``None``) and how many readings were skipped."""
        with self._lock:
            chunks, self._chunks = self._chunks, []
            skipped, self._skipped = self._skipped, 0
            self._queued = 0
            self._full_since = None
        return (pa.concat_tables(chunks) if chunks else None), skipped


class Bus:
    """Publish acknowledged readings per tenant; subscribe to one site's readings.

    :meth:`publish` runs on the ingest path (in the write-ahead log's acknowledgement callback), so it
    only keeps the batch in the recent buffer and, when its tenant has listeners of its site, appends
    it to a backlog. A thread of the bus's own fans the backlog out to the listeners' queues (the
    filtering), so many listeners never delay the acknowledgement of a batch.
    """

    def __init__(self, recent: Recent, *, max_readings: int = 100_000, drop_after_s: float = 30.0) -> None:
        self.recent = recent
        self.max_readings = max_readings
        self.drop_after_s = drop_after_s
        self._lock = threading.Lock()
        # Replaced, never mutated, so publishers read it without taking the lock.
        self._listeners: dict[str, tuple[Subscription, ...]] = {}
        self._cond = threading.Condition()
        self._backlog: list[tuple[str, str, pa.Table]] = []
        self._backlog_readings = 0
        self._published = 0
        self._fanned = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        #: Listeners dropped for not reading.
        self.dropped = 0
        self._skipped_by_gone = 0

    @property
    def listeners(self) -> int:
        """How many listeners are subscribed now, over every tenant."""
        return sum(len(subs) for subs in self._listeners.values())

    @property
    def skipped(self) -> int:
        """Readings skipped by slow listeners since the start, over every listener."""
        live = sum(s.skipped_total for subs in self._listeners.values() for s in subs)
        return self._skipped_by_gone + live

    def subscribe(self, tenant: str, filter: Filter) -> Subscription:
        """A new listener of ``tenant``'s readings that match ``filter``."""
        sub = Subscription(tenant, filter, self.max_readings, self.drop_after_s)
        with self._lock:
            self._listeners = {**self._listeners, tenant: (*self._listeners.get(tenant, ()), sub)}
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-bus", daemon=True)
                self._thread.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop feeding ``sub``; calling it twice is harmless."""
        with self._lock:
            if sub.is_closed:
                return
            sub.is_closed = True
            self._skipped_by_gone += sub.skipped_total
            left = tuple(s for s in self._listeners.get(sub.tenant, ()) if s is not sub)
            listeners = dict(self._listeners)
            if left:
                listeners[sub.tenant] = left
            else:
                listeners.pop(sub.tenant, None)
            self._listeners = listeners

    def publish(self, tenant: str, site: str, readings: pa.Table) -> None:
        """Hand one durable batch's good readings (``WAL_SCHEMA``) to the recent buffer and listeners."""
        n = readings.num_rows
        if n == 0:
            return
        self.recent.add(tenant, site, readings)
        subs = self._listeners.get(tenant)
        if not subs:
            return
        with self._cond:
            if self._backlog_readings + n > self.max_readings:
                # The fan-out thread is this far behind: these readings are skipped by every listener.
                for sub in subs:
                    if sub.filter.site == site:
                        sub.skip(n)
                return
            self._backlog.append((tenant, site, readings))
            self._backlog_readings += n
            self._published += 1
            self._cond.notify()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published batch is in its listeners' queues; ``False`` on time-out."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._fanned < self._published:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Fan out what is queued, then stop the bus's thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._closing:
                    self._cond.wait()
                if not self._backlog:
                    return
                work, self._backlog = self._backlog, []
                self._backlog_readings = 0
            for tenant, site, readings in work:
                try:
                    self.fan_out(tenant, site, readings)
                except Exception:  # a bad batch must not end every stream
                    log.exception("live: cannot fan out a batch of tenant %s site %s", tenant, site)
            with self._cond:
                self._fanned += len(work)
                self._cond.notify_all()

    def fan_out(self, tenant: str, site: str, readings: pa.Table) -> None:
        """Queue a batch for each listener of its tenant and site, filtered (runs in the bus's thread)."""
        subs = self._listeners.get(tenant, ())
        selected: dict[Filter, pa.Table] = {}
        present: set[str] | None = None
        stuck = []
        for sub in subs:
            wanted = sub.filter
            if wanted.site != site:
                continue
            part = selected.get(wanted)
            if part is None:
                if wanted.sensor is not None:
                    if present is None:  # most sensor listeners want a sensor this batch does not hold
                        present = set(pc.unique(readings["sensor"]).to_pylist())
                    if wanted.sensor not in present:
                        continue
                part = selected[wanted] = wanted.select(readings)
            if not sub.offer(part):
                stuck.append(sub)
        for sub in stuck:
            log.warning(
                "live: dropped a listener of tenant %s site %s that read nothing for %.0f s",
                tenant,
                site,
                self.drop_after_s,
            )
            self.dropped += 1
            self.unsubscribe(sub)


class BusCollector(Collector):
    """Listeners, skipped readings, dropped listeners and the recent buffer's size."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        """The bus's figures now."""
        bus = self.bus
        yield GaugeMetricFamily("ironwatch_live_listeners", "Live streams open now", value=bus.listeners)
        yield CounterMetricFamily(
            "ironwatch_live_skipped_readings",
            "Readings a slow live listener skipped (it got a lagged event)",
            value=bus.skipped,
        )
        yield CounterMetricFamily(
            "ironwatch_live_dropped_listeners",
            "Live listeners dropped because they read nothing for live.drop_after_s",
            value=bus.dropped,
        )
        yield GaugeMetricFamily(
            "ironwatch_live_recent_readings",
            "Acknowledged readings held in memory until the lake has them",
            value=bus.recent.readings_held,
        )
        yield CounterMetricFamily(
            "ironwatch_live_recent_evicted_readings",
            "Readings let go from the recent buffer before the lake had them (buffer full)",
            value=bus.recent.evicted_early,
        )


def watch(registry: CollectorRegistry, bus: Bus) -> None:
    """Serve the bus's figures from ``registry``."""
    registry.register(BusCollector(bus))
