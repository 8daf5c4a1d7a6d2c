"""The batch ledger: which ``(tenant, gateway, batch)`` keys are durable, and which are in flight.

Batch numbers are each gateway's own increasing sequence, so the keys a gateway has sent are kept as
ranges (almost always a single one); the gaps between ranges are batches still missing.
"""

from __future__ import annotations

import bisect
import threading
from concurrent.futures import Future
from typing import Any

Key = tuple[str, str, int]


class RangeSet:
    """A set of non-negative integers kept as sorted, disjoint, inclusive ranges."""

    def __init__(self, ranges: list[list[int]] | None = None) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in ranges or []:
            self.add_range(lo, hi)

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self._lo, n) - 1
        return i >= 0 and n <= self._hi[i]

    def add(self, n: int) -> None:
        """Add one number, joining neighbouring ranges."""
        if self._hi and n == self._hi[-1] + 1:  # the common case: the next batch in sequence
            self._hi[-1] = n
            return
        self.add_range(n, n)

    def add_range(self, lo: int, hi: int) -> None:
        """Add every number from ``lo`` to ``hi`` inclusive."""
        i = bisect.bisect_left(self._hi, lo - 1)  # first range that reaches lo or touches it
        j = bisect.bisect_right(self._lo, hi + 1)  # ranges before j start at or before hi + 1
        if i < j:
            lo, hi = min(lo, self._lo[i]), max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]

    def ranges(self) -> list[list[int]]:
        """The ranges as ``[[lo, hi], ...]``."""
        return [[a, b] for a, b in zip(self._lo, self._hi, strict=True)]

    def gaps(self) -> list[list[int]]:
        """Missing ranges between the first and the last number held."""
        return [[self._hi[i] + 1, self._lo[i + 1] - 1] for i in range(len(self._lo) - 1)]

    @property
    def last(self) -> int | None:
        return self._hi[-1] if self._hi else None


class Ledger:
    """Durable and in-flight batch keys; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str], RangeSet] = {}
        #: Keys being written; the future is made only when a second writer of the key has to wait.
        self._in_flight: dict[Key, Future[None] | None] = {}
        #: The highest batch number claimed per gateway (see :meth:`last`).
        self._claimed: dict[tuple[str, str], int] = {}

    def reserve(self, key: Key) -> tuple[str, Future[None] | None]:
        """Claim ``key`` for writing.

        Returns ``("new", None)`` when the caller must write it, ``("duplicate", None)`` when it is
        already durable, or ``("in_flight", future)`` when another request is writing it right now:
        wait for that future, then answer as a duplicate.
        """
        tenant, gateway, batch = key
        with self._lock:
            ranges = self._done.get((tenant, gateway))
            if ranges is not None and batch in ranges:
                return "duplicate", None
            if key in self._in_flight:
                pending = self._in_flight[key]
                if pending is None:
                    pending = self._in_flight[key] = Future()
                return "in_flight", pending
            self._in_flight[key] = None
            if batch > self._claimed.get((tenant, gateway), -1):
                self._claimed[(tenant, gateway)] = batch
            return "new", None

    def commit(self, key: Key) -> None:
        """Mark ``key`` durable and wake whoever waits on it."""
        self.commit_many([key])

    def commit_many(self, keys: list[Key]) -> None:
        """Mark ``keys`` durable (the batches of one log record) and wake whoever waits on them."""
        waiting = []
        with self._lock:
            for key in keys:
                tenant, gateway, batch = key
                ranges = self._done.get((tenant, gateway))
                if ranges is None:
                    ranges = self._done[(tenant, gateway)] = RangeSet()
                ranges.add(batch)
                fut = self._in_flight.pop(key, None)
                if fut is not None:
                    waiting.append(fut)
        for fut in waiting:
            fut.set_result(None)

    def release(self, key: Key, error: BaseException) -> None:
        """Give up a reservation whose write failed; waiters get the same error."""
        with self._lock:
            fut = self._in_flight.pop(key, None)
        if fut is not None:
            fut.set_exception(error)

    def mark(self, key: Key) -> None:
        """Record a key found durable during recovery."""
        with self._lock:
            self._done.setdefault(key[:2], RangeSet()).add(key[2])  # type: ignore[arg-type]

    def last(self, tenant: str, gateway: str) -> int | None:
        """The highest batch number of a gateway that is durable, or was claimed for writing since
        this server started (also when that write failed: the batch may come again, as an MQTT
        broker sends an unacknowledged message again); None if none."""
        with self._lock:
            ranges = self._done.get((tenant, gateway))
            durable = ranges.last if ranges is not None else None
            claimed = self._claimed.get((tenant, gateway))
        found = [n for n in (durable, claimed) if n is not None]
        return max(found) if found else None

    def ranges(self, tenant: str, gateway: str) -> RangeSet:
        with self._lock:
            return RangeSet(self._done.get((tenant, gateway), RangeSet()).ranges())

    def snapshot(self) -> dict[str, dict[str, list[list[int]]]]:
        """Every durable key, as ``{tenant: {gateway: ranges}}`` (JSON-ready)."""
        with self._lock:
            out: dict[str, dict[str, list[list[int]]]] = {}
            for (tenant, gateway), ranges in self._done.items():
                out.setdefault(tenant, {})[gateway] = ranges.ranges()
            return out

    def load(self, snapshot: dict[str, Any]) -> None:
        """Add the keys of a :meth:`snapshot`."""
        with self._lock:
            for tenant, gateways in snapshot.items():
                for gateway, ranges in gateways.items():
                    target = self._done.setdefault((tenant, gateway), RangeSet())
                    for lo, hi in ranges:
                        target.add_range(lo, hi)
