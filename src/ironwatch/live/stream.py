"""Server-sent events for one listener: fresh readings and rollups of the current minute.

Every ``interval_s`` the stream takes what its subscription queued and sends at most one event of
each kind, with columnar JSON (``docs/series.md`` has the format):

- ``readings``: ``{"site", "ts", "sensor", "metric", "value"}``, ``ts`` in epoch milliseconds;
- ``rollup``: the minutes those readings touched, with ``count``, ``mean``, ``min``, ``max``, ``last``
  over what this stream has seen (minutes from the previous one on, by the server's clock);
- ``lagged``: ``{"skipped": n}`` when the listener fell behind and readings were skipped;
- ``dropped``: the last event, when the listener read nothing for so long that the bus let it go;
- ``bye``: the last event, when the server stops.

A comment line (``: heartbeat``) goes out after ``heartbeat_s`` of silence, so proxies keep the
connection open and a vanished client is noticed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ironwatch.errors import InvalidInput, Unavailable
from ironwatch.live.bus import Bus, Filter
from ironwatch.model import check_id

MINUTE_US = 60_000_000
_KEYS = ["sensor", "metric", "minute"]
_COLUMNS = [*_KEYS, "count", "sum", "min", "max", "last", "last_ts"]
#: How two partial aggregates of one minute combine, column by column.
_MERGE = (
    ("count", "sum"),
    ("sum", "sum"),
    ("min", "min"),
    ("max", "max"),
    ("last", "last"),
    ("last_ts", "max"),
)
#: Readings events this large are encoded off the event loop.
_ENCODE_IN_THREAD_ROWS = 20_000


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with a JSON payload."""
    return (
        b"event: "
        + event.encode()
        + b"\ndata: "
        + orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
        + b"\n\n"
    )


def _millis(ts_us: pa.Array | pa.ChunkedArray) -> Any:
    return pc.divide(ts_us, 1000).to_numpy()


class MinuteRollups:
    """Per sensor, metric and minute: count, sum, min, max and last value over the readings seen."""

    def __init__(self) -> None:
        self._state: pa.Table | None = None

    @property
    def size(self) -> int:
        """How many (sensor, metric, minute) rows are kept."""
        return 0 if self._state is None else self._state.num_rows

    def update(self, readings: pa.Table, keep_from_us: int) -> pa.Table:
        """Fold in new readings of minutes from ``keep_from_us`` on; return the rows they changed."""
        ts = readings["ts"]
        readings = readings.filter(pc.greater_equal(ts, keep_from_us))
        if readings.num_rows == 0:
            self._forget_before(keep_from_us)
            return pa.table({})
        ts = readings["ts"]
        minute = pc.multiply(pc.divide(ts, MINUTE_US), MINUTE_US)
        part = (
            pa.table(
                {
                    "sensor": readings["sensor"],
                    "metric": readings["metric"],
                    "minute": minute,
                    "ts": ts,
                    "value": readings["value"],
                }
            )
            .sort_by("ts")  # so that "last" is the value with the latest event time
            .group_by(_KEYS, use_threads=False)
            .aggregate(
                [
                    ("value", "count"),
                    ("value", "sum"),
                    ("value", "min"),
                    ("value", "max"),
                    ("value", "last"),
                    ("ts", "max"),
                ]
            )
            .rename_columns(
                {
                    "value_count": "count",
                    "value_sum": "sum",
                    "value_min": "min",
                    "value_max": "max",
                    "value_last": "last",
                    "ts_max": "last_ts",
                }
            )
            .select(_COLUMNS)
        )
        merged = part if self._state is None else self._merge(self._state, part)
        self._state = merged
        self._forget_before(keep_from_us)
        changed = merged.join(part.select(_KEYS), _KEYS, join_type="inner", use_threads=False)
        return changed.sort_by([("sensor", "ascending"), ("metric", "ascending"), ("minute", "ascending")])

    @staticmethod
    def _merge(state: pa.Table, part: pa.Table) -> pa.Table:
        both = pa.concat_tables([state, part]).sort_by("last_ts")
        return (
            both.group_by(_KEYS, use_threads=False)
            .aggregate([(c, how) for c, how in _MERGE])
            .rename_columns({f"{c}_{how}": c for c, how in _MERGE})
            .select(_COLUMNS)
        )

    def _forget_before(self, keep_from_us: int) -> None:
        if self._state is not None:
            self._state = self._state.filter(pc.greater_equal(self._state["minute"], keep_from_us))


def readings_event(site: str, readings: pa.Table) -> bytes:
    """The ``readings`` event of a batch of readings (``ts`` in epoch milliseconds)."""
    return sse(
        "readings",
        {
            "site": site,
            "ts": _millis(readings["ts"]),
            "sensor": readings["sensor"].to_pylist(),
            "metric": readings["metric"].to_pylist(),
            "value": readings["value"].to_numpy(),
        },
    )


def rollup_event(site: str, rows: pa.Table) -> bytes:
    """The ``rollup`` event of changed minute rows (``minute`` in epoch milliseconds)."""
    count = rows["count"].to_numpy()
    return sse(
        "rollup",
        {
            "site": site,
            "minute": _millis(rows["minute"]),
            "sensor": rows["sensor"].to_pylist(),
            "metric": rows["metric"].to_pylist(),
            "count": count,
            "mean": rows["sum"].to_numpy() / count,
            "min": rows["min"].to_numpy(),
            "max": rows["max"].to_numpy(),
            "last": rows["last"].to_numpy(),
        },
    )


def _tick(site: str, readings: pa.Table | None, skipped: int, rollups: MinuteRollups, now_us: int) -> bytes:
    out = []
    if skipped:
        out.append(sse("lagged", {"skipped": skipped}))
    if readings is not None and readings.num_rows:
        out.append(readings_event(site, readings))
        changed = rollups.update(readings, now_us // MINUTE_US * MINUTE_US - MINUTE_US)
        if changed.num_rows:
            out.append(rollup_event(site, changed))
    return b"".join(out)


async def events(
    bus: Bus,
    tenant: str,
    wanted: Filter,
    *,
    interval_s: float,
    heartbeat_s: float,
    now_us: Callable[[], int],
    is_closing: Callable[[], bool] = lambda: False,
) -> AsyncIterator[bytes]:
    """The event stream of one listener; unsubscribes when the client goes (the task is cancelled).

    It ends by itself when ``is_closing()`` turns true, so a server that stops is not held open.
    """
    sub = bus.subscribe(tenant, wanted)
    rollups = MinuteRollups()
    try:
        hello = {"site": wanted.site, "sensor": wanted.sensor, "metric": wanted.metric}
        yield b"retry: 2000\n" + sse("hello", {**hello, "interval_ms": round(interval_s * 1000)})
        quiet_since = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            readings, skipped = sub.take()
            if readings is not None and readings.num_rows > _ENCODE_IN_THREAD_ROWS:
                chunk = await asyncio.to_thread(_tick, wanted.site, readings, skipped, rollups, now_us())
            else:
                chunk = _tick(wanted.site, readings, skipped, rollups, now_us())
            if chunk:
                yield chunk
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= heartbeat_s:
                yield b": heartbeat\n\n"
                quiet_since = time.monotonic()
            if sub.is_closed:
                queued, skipped = sub.take()
                skipped += queued.num_rows if queued is not None else 0
                last = sse("lagged", {"skipped": skipped}) if skipped else b""
                yield last + sse("dropped", {"reason": "the client read nothing for too long"})
                return
            if is_closing():
                yield sse("bye", {"reason": "the server is stopping"})
                return
    finally:
        bus.unsubscribe(sub)


class Streams:
    """Opens live streams within ``live.max_listeners``; the web layer only wraps them in a response."""

    def __init__(self, bus: Bus, settings: Any, now_us: Callable[[], int]) -> None:
        self.bus = bus
        self.settings = settings
        self.now_us = now_us
        self._closing = threading.Event()

    def close(self) -> None:
        """End every open stream within one interval (the server is stopping)."""
        self._closing.set()

    def filter(self, site: str | None, sensor: str | None, metric: str | None) -> Filter:
        """A checked filter; :class:`InvalidInput` names a missing or malformed parameter."""
        if not site:
            raise InvalidInput("site", "required")
        return Filter(
            check_id("site", site),
            check_id("sensor", sensor) if sensor else None,
            check_id("metric", metric) if metric else None,
        )

    def open(self, tenant: str, wanted: Filter) -> AsyncIterator[bytes]:
        """The event stream of a new listener; :class:`Unavailable` when too many are open."""
        cfg = self.settings.live
        if self.bus.listeners >= int(cfg.max_listeners):
            raise Unavailable(f"{self.bus.listeners} live streams are open, the most this server allows")
        return events(
            self.bus,
            tenant,
            wanted,
            interval_s=float(cfg.interval_s),
            heartbeat_s=float(cfg.heartbeat_s),
            now_us=self.now_us,
            is_closing=self._closing.is_set,
        )
