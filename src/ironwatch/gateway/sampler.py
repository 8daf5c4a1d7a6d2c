"""Sampling: each source is read at its own interval, in its own thread, straight into the outbox.

A source that cannot be read (the PLC went away) is logged once when it goes and once when it
comes back; the other sources go on. The sampler also keeps, per sensor, the time of its last
reading, which the heartbeat reports with a status (``ok``, ``silent`` when it is overdue by
several of its periods, ``unreachable`` while its source cannot be read).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from ironwatch.gateway.outbox import Outbox
from ironwatch.gateway.source import Historical, Source, SourceUnavailable

log = logging.getLogger(__name__)

#: A sensor is "silent" when nothing came for this many of its declared periods.
SILENT_AFTER_PERIODS = 5


class SensorBoard:
    """Last reading time and status of every sensor the gateway knows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms: dict[str, int] = {}
        self._period_ms: dict[str, float] = {}
        self._source_of: dict[str, str] = {}
        self._down: set[str] = set()

    def declare(self, source: Source) -> None:
        """Register the sensors of a source with their declared rates."""
        with self._lock:
            for sensor, rate_per_min in source.declared_rates().items():
                self._period_ms[sensor] = 60_000.0 / rate_per_min if rate_per_min > 0 else float("inf")
                self._source_of[sensor] = source.name

    def seen(self, table: pa.Table) -> None:
        """Note the newest reading of each sensor in ``table`` (one group-by, not a loop per reading)."""
        if table.num_rows == 0:
            return
        newest = table.group_by("sensor").aggregate([("ts_ms", "max")])
        sensors = newest.column("sensor").to_pylist()
        times = newest.column("ts_ms_max").to_pylist()
        with self._lock:
            for sensor, ts in zip(sensors, times, strict=True):
                if ts > self._last_ms.get(sensor, -1):
                    self._last_ms[sensor] = ts

    def source_down(self, name: str, is_down: bool) -> None:
        """Mark a source as unreachable, or reachable again."""
        with self._lock:
            (self._down.add if is_down else self._down.discard)(name)

    def statuses(self, now_ms: int) -> dict[str, dict[str, object]]:
        """``{sensor: {"last_ts", "status"}}`` for the heartbeat."""
        with self._lock:
            out: dict[str, dict[str, object]] = {}
            for sensor in sorted(set(self._period_ms) | set(self._last_ms)):
                last = self._last_ms.get(sensor)
                period = self._period_ms.get(sensor, 60_000.0)
                if self._source_of.get(sensor) in self._down:
                    status = "unreachable"
                elif last is None or now_ms - last > SILENT_AFTER_PERIODS * max(period, 1000.0):
                    status = "silent"
                else:
                    status = "ok"
                out[sensor] = {"last_ts": last, "status": status}
            return out


class Sampler:
    """One thread per source, reading it every ``interval_s`` into the outbox."""

    def __init__(
        self,
        sources: list[Source],
        outbox: Outbox,
        board: SensorBoard,
        stop: threading.Event,
        *,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.sources = sources
        self.outbox = outbox
        self.board = board
        self.stop = stop
        self.read_failures = 0
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one thread per source."""
        for source in self.sources:
            self.board.declare(source)
            thread = threading.Thread(
                target=self._run, args=(source,), name=f"sample-{source.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for the threads after ``stop`` is set."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, source: Source) -> None:
        is_open = False
        is_down = False
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                if not is_open:
                    source.open()
                    is_open = True
                table = source.read(self._clock_ms())
                self.outbox.add(table)
                self.board.seen(table)
                if is_down:
                    log.warning("source %s is back", source.name)
                    is_down = False
                    self.board.source_down(source.name, False)
            except SourceUnavailable as exc:
                self.read_failures += 1
                if not is_down:
                    log.warning("%s (retrying every %g s)", exc.message, source.interval_s)
                    is_down = True
                    self.board.source_down(source.name, True)
            except Exception:  # a bug in a source must not stop the others, nor go unseen
                self.read_failures += 1
                log.exception("reading source %s failed", source.name)
            next_at += source.interval_s
            now = time.monotonic()
            if next_at < now:  # fell behind (a slow PLC): skip the missed ticks, don't burst
                next_at = now + source.interval_s
            self.stop.wait(max(0.0, next_at - now))
        source.close()


def backfill(
    source: Historical,
    outbox: Outbox,
    board: SensorBoard,
    start_ms: int,
    end_ms: int,
    stop: threading.Event,
    *,
    key: str,
    chunk_s: float = 60.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Put the history of ``[start_ms, end_ms)`` into the outbox without crowding out live readings.

    Progress is saved under ``key`` in the same transaction as each chunk, so a backfill cut off
    by a restart (or ``kill -9``) resumes where it stopped and stores nothing twice. History waits
    while the outbox is more than half full, so it never makes the buffer drop live readings.
    Returns the readings added by this call.
    """
    done = outbox.note(key)
    since_ms = max(start_ms, int(done)) if done is not None else start_ms
    added = 0
    if since_ms >= end_ms:
        return 0
    for table in source.history(since_ms, end_ms, chunk_s):
        while outbox.size_bytes > outbox.max_bytes // 2 and not stop.is_set():
            stop.wait(0.2)
        if stop.is_set():
            break
        if table.num_rows == 0:
            continue
        newest = int(pc.max(table.column("ts_ms")).as_py())
        added += outbox.add(table, note=(key, str(newest + 1)))
        board.seen(table)
        if on_progress is not None:
            on_progress(newest, added)
    else:
        outbox.set_note(key, str(end_ms))
    return added
