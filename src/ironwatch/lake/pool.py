"""Sandboxes kept per tenant root and lent to one query at a time, so queries skip DuckDB's start.

A new sandboxed DuckDB costs ~13 ms, and its first query ~15-20 ms more to read and parse the
footers of the files it scans. A :class:`Pool` keeps a few sandboxes open between queries: each is
made for one root (by URL), one memory limit and one profiling mode, and is only ever lent again for
that same key, so a sandbox of one tenant never serves another. Each lease sets up the views over
the files visible at that moment (:meth:`Sandbox.prepare`) and undoes what the query brought
(:meth:`Sandbox.reset`) before the sandbox is kept again.

A sandbox whose query was stopped (cancel, time limit) or ended with anything else than an
:class:`~ironwatch.errors.IronwatchError` is closed instead of kept: DuckDB would most likely be fine,
but an interrupt is the one event whose after-effects are hard to prove absent, and it is rare.

Memory: a sandbox holds at most ``query.memory_limit`` while a query runs. Idle ones keep their
parsed footers (~6 MB for a week of one 550 x 17 site; ~40 MiB of the process in all, measured);
at most ``idle`` of them are kept (``idle_per_root`` of one root), each for at most ``idle_s``.
Under load more sandboxes are made, one per query running, and closed when they are given back.

What the pool did is counted (:class:`Figures`) and served at ``/metrics`` by :class:`PoolCollector`:
queries by outcome and their time, sandboxes made, in use, idle and thrown away.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType

import pyarrow as pa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ironwatch.errors import IronwatchError, StorageError
from ironwatch.lake.root import Root
from ironwatch.lake.sandbox import Sandbox


@dataclasses.dataclass(frozen=True)
class Key:
    """What a sandbox is made for; it is lent only to queries of the same key."""

    url: str
    memory_limit: str
    threads: int
    is_profiled: bool


#: How a lease ended: the query answered, was refused with an error of ours (bad SQL, too many
#: rows), was stopped (cancelled, over its time limit, or its client went away), or failed (the
#: lake or the store of a job's result failed, or a bug).
OUTCOMES = ("ok", "error", "stopped", "failed")


@dataclasses.dataclass
class Figures:
    """What a pool has done since it started (read under the pool's lock)."""

    queries: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    in_use: int = 0
    discarded: int = 0


class Lease:
    """A sandbox lent to one query; set :attr:`is_spoiled` to have it closed rather than kept."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.is_spoiled = False


class Pool:
    """Sandboxed DuckDBs per tenant root, reused across queries; a context manager that closes them.

    ``idle`` sandboxes at most are kept between queries (0 keeps none: every query gets a new one,
    closed after), ``idle_per_root`` of one root, and none longer than ``idle_s`` unused.
    """

    def __init__(
        self, *, idle: int = 4, idle_per_root: int = 2, idle_s: float = 300.0, threads: int = 2
    ) -> None:
        self.idle = max(0, idle)
        self.idle_per_root = max(0, idle_per_root)
        self.idle_s = idle_s
        self.threads = threads
        #: Sandboxes made so far (a new DuckDB each); the rest of the queries reused one.
        self.created = 0
        self.is_closed = False
        self._lock = threading.Lock()
        self._idle: dict[Key, list[Sandbox]] = {}
        self._figures = Figures()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def idle_count(self, url: str | None = None) -> int:
        """Sandboxes kept now, of the root at ``url`` or of all."""
        with self._lock:
            return sum(len(boxes) for key, boxes in self._idle.items() if url is None or key.url == url)

    @contextmanager
    def lease(
        self,
        root: Root,
        sql: str | None,
        *,
        memory_limit: str,
        tables: Mapping[str, pa.Table] | None = None,
        is_profiled: bool = False,
    ) -> Iterator[Lease]:
        """Lend a sandbox of ``root`` with the views ``sql`` can use and ``tables`` registered.

        The sandbox is the caller's alone until the block ends; then it is reset and kept, or closed
        (when the block failed unexpectedly, :attr:`Lease.is_spoiled` was set, or the pool is full).
        """
        key = Key(root.url, memory_limit, self.threads, is_profiled)
        started = time.monotonic()
        with self._lock:
            self._figures.in_use += 1
        outcome = "failed"
        try:
            box = self._take(key)
            if box is None:
                box = Sandbox(root, memory_limit=memory_limit, threads=self.threads, is_profiled=is_profiled)
                with self._lock:
                    self.created += 1
            lease = Lease(box)
            is_kept = False
            try:
                box.prepare(root, sql, tables)
                yield lease
                is_kept = not lease.is_spoiled
                outcome = "ok"
            except IronwatchError as exc:
                # An answer of ours (a SQL error, a row limit), or a result that could not be
                # stored: DuckDB itself was not disturbed.
                is_kept = not lease.is_spoiled
                outcome = "failed" if isinstance(exc, StorageError) else "error"
                raise
            except GeneratorExit:
                # The borrower gave up early (a client that went away in the middle of a stream):
                # the query was stopped, and its DuckDB may be half-way through an answer.
                outcome = "stopped"
                raise
            finally:
                if lease.is_spoiled:
                    outcome = "stopped"
                self._give_back(key, box, is_kept)
        finally:
            with self._lock:
                figures = self._figures
                figures.in_use -= 1
                figures.queries[outcome] += 1
                figures.seconds[outcome] += time.monotonic() - started

    def figures(self) -> Figures:
        """A copy of what the pool has done so far."""
        with self._lock:
            f = self._figures
            return Figures(dict(f.queries), dict(f.seconds), f.in_use, f.discarded)

    def _take(self, key: Key) -> Sandbox | None:
        stale: list[Sandbox] = []
        found = None
        now = time.monotonic()
        with self._lock:
            boxes = self._idle.get(key, [])
            while boxes:
                box = boxes.pop()  # the most recently used: its caches are the warmest
                if now - box.used_s > self.idle_s:
                    stale.append(box)
                else:
                    found = box
                    break
        for box in stale:
            box.close()
        return found

    def _give_back(self, key: Key, box: Sandbox, is_kept: bool) -> None:
        is_kept = is_kept and not self.is_closed and self.idle > 0 and self.idle_per_root > 0
        if is_kept:
            try:
                box.reset()
            except IronwatchError:
                is_kept = False
        closing = [] if is_kept else [box]
        with self._lock:
            if not is_kept and self.idle > 0 and self.idle_per_root > 0 and not self.is_closed:
                self._figures.discarded += 1  # thrown away, not for want of room
            if is_kept and not self.is_closed:  # the pool may have closed meanwhile
                boxes = self._idle.setdefault(key, [])
                boxes.append(box)
                same_root = [b for k, bs in self._idle.items() if k.url == key.url for b in bs]
                closing += self._evict(same_root, self.idle_per_root)
                closing += self._evict([b for bs in self._idle.values() for b in bs], self.idle)
            elif is_kept:
                closing.append(box)
        for stale in closing:
            stale.close()

    def _evict(self, boxes: list[Sandbox], keep: int) -> list[Sandbox]:
        """Drop the least recently used of ``boxes`` beyond ``keep`` from the idle lists (locked)."""
        victims = sorted(boxes, key=lambda b: b.used_s)[: max(0, len(boxes) - keep)]
        for victim in victims:
            for boxes_of_key in self._idle.values():
                if victim in boxes_of_key:
                    boxes_of_key.remove(victim)
        return victims

    def close(self) -> None:
        """Close every idle sandbox; those lent out now are closed when they come back."""
        with self._lock:
            self.is_closed = True
            boxes = [b for bs in self._idle.values() for b in bs]
            self._idle.clear()
        for box in boxes:
            box.close()


class PoolCollector(Collector):
    """Serves a :class:`Pool`'s figures at ``/metrics``."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily]:
        """The pool's figures now."""
        pool, figures = self.pool, self.pool.figures()
        queries = SummaryMetricFamily(
            "ironwatch_query",
            "Analysts' SQL queries (API and query jobs) by outcome: ok, error (bad SQL, too "
            "many rows), stopped (cancelled, over the time limit, or the client went away), "
            "failed (the lake or the result store failed, or a bug); and their seconds",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            queries.add_metric([outcome], figures.queries[outcome], figures.seconds[outcome])
        yield queries
        yield GaugeMetricFamily(
            "ironwatch_query_sandboxes_in_use", "Sandboxed DuckDBs running a query now", value=figures.in_use
        )
        yield GaugeMetricFamily(
            "ironwatch_query_sandboxes_idle",
            "Sandboxed DuckDBs kept open between queries",
            value=pool.idle_count(),
        )
        yield CounterMetricFamily(
            "ironwatch_query_sandboxes_created",
            "Sandboxed DuckDBs opened (the rest reused one)",
            value=pool.created,
        )
        yield CounterMetricFamily(
            "ironwatch_query_sandboxes_discarded",
            "Sandboxed DuckDBs closed after a query was stopped or failed, instead of being kept",
            value=figures.discarded,
        )


def watch(registry: CollectorRegistry, pool: Pool) -> None:
    """Serve ``pool``'s figures from ``registry``."""
    registry.register(PoolCollector(pool))
