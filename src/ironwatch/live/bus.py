"""The live bus: acknowledged readings fanned out, in process, to the streams that listen.

The ingest pipeline publishes each batch's good readings once the batch is durable, from the thread
that completes the acknowledgement. Publishing must cost next to nothing there: the recent buffer
keeps a reference to the batch's table (no copy), and with no listener in the batch's tenant that is
all. With listeners, a batch is matched against each listener's site with one string comparison
(a batch comes from one site), and sensor and metric filters are one vectorised Arrow mask per
distinct filter, never a Python loop per reading. Each listener has a bounded queue: a listener that
falls behind skips readings and is told how many, and one that stops reading for ``drop_after_s``
is dropped. Neither ever slows ingest.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc

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
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
            return now - self._full_since < self.drop_after_s

    def take(self) -> tuple[pa.Table | None, int]:
        """Everything queued since the last call (or ``None``) and how many readings were skipped."""
        with self._lock:
            chunks, self._chunks = self._chunks, []
            skipped, self._skipped = self._skipped, 0
            self._queued = 0
            self._full_since = None
        return (pa.concat_tables(chunks) if chunks else None), skipped


class Bus:
    """Publish acknowledged readings per tenant; subscribe to one site's readings."""

    def __init__(self, recent: Recent, *, max_readings: int = 100_000, drop_after_s: float = 30.0) -> None:
        self.recent = recent
        self.max_readings = max_readings
        self.drop_after_s = drop_after_s
        self._lock = threading.Lock()
        # Replaced, never mutated, so publishers read it without taking the lock.
        self._listeners: dict[str, tuple[Subscription, ...]] = {}
        #: Listeners dropped for not reading.
        self.dropped = 0

    @property
    def listeners(self) -> int:
        """How many listeners are subscribed now, over every tenant."""
        return sum(len(subs) for subs in self._listeners.values())

    def subscribe(self, tenant: str, filter: Filter) -> Subscription:
        """A new listener of ``tenant``'s readings that match ``filter``."""
        sub = Subscription(tenant, filter, self.max_readings, self.drop_after_s)
        with self._lock:
            self._listeners = {**self._listeners, tenant: (*self._listeners.get(tenant, ()), sub)}
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop feeding ``sub``; calling it twice is harmless."""
        sub.is_closed = True
        with self._lock:
            left = tuple(s for s in self._listeners.get(sub.tenant, ()) if s is not sub)
            listeners = dict(self._listeners)
            if left:
                listeners[sub.tenant] = left
            else:
                listeners.pop(sub.tenant, None)
            self._listeners = listeners

    def publish(self, tenant: str, site: str, readings: pa.Table) -> None:
        """Hand one durable batch's good readings (``WAL_SCHEMA``) to the recent buffer and listeners."""
        if readings.num_rows == 0:
            return
        self.recent.add(tenant, site, readings)
        subs = self._listeners.get(tenant)
        if not subs:
            return
        selected: dict[Filter, pa.Table] = {}
        stuck = []
        for sub in subs:
            if sub.filter.site != site:
                continue
            part = selected.get(sub.filter)
            if part is None:
                part = selected[sub.filter] = sub.filter.select(readings)
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
