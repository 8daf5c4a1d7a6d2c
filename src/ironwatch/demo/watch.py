"""What the demo shows while it runs: when it is ready, the simulated outages, the backfill's progress.

:class:`Watch` is ticked about once a second by the demo. It reads the gateway's outbox counts
(exact, from the same SQLite file the gateway writes) and asks the server through SQL whether the
readings of this run are visible yet. Every line it prints is one event a person can follow:
the link cut and healed, how many readings the gateway buffered meanwhile, when that backlog was
drained, and how far the backfill of history has got, with an estimate of the time left.
"""

from __future__ import annotations

import dataclasses
import http.client
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from ironwatch.demo.link import Link
from ironwatch.gateway.agent import BackfillProgress
from ironwatch.gateway.outbox import Counts, Outbox

#: Longest wait for this run's readings to show in SQL before the banner is printed anyway.
VISIBLE_WAIT_S = 60.0
#: Seconds between two backfill progress lines.
PROGRESS_EVERY_S = 10.0


def human(n: float) -> str:
    """``80.8M``, ``12.3k`` or ``950``: counts as a person reads them at a glance."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:.0f}"


def span(seconds: float) -> str:
    """``2 min``, ``45 s``, ``1 h 10 min``: a duration as a person says it."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"


@dataclasses.dataclass(frozen=True)
class Outages:
    """Cut the link every ``every_s`` seconds (0: never) for ``length_s`` seconds."""

    every_s: float
    length_s: float


@dataclasses.dataclass
class Backfill:
    """The history the gateway sends: ``[start_ms, end_ms)``, about ``expected`` readings."""

    start_ms: int
    end_ms: int
    expected: int
    is_done: bool = False


class Watch:
    """Ticked by the demo's thread; says what happens, cuts and heals the link, ends at the deadline."""

    def __init__(
        self,
        outbox: Outbox,
        progress: Callable[[], BackfillProgress | None],
        link: Link,
        outages: Outages,
        probe: Callable[[], bool],
        *,
        backfill: Backfill | None,
        say: Callable[[str], None],
    ) -> None:
        self.outbox = outbox
        self.progress = progress
        self.link = link
        self.outages = outages
        self.probe = probe
        self.backfill = backfill
        self.say = say
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self._next_cut: float | None = None
        self._cut_at: float | None = None
        self._healed_ms: int | None = None
        self._healed_at = 0.0
        self._next_progress = self.started + PROGRESS_EVERY_S
        self._last_acknowledged = (self.started, outbox.counts().acknowledged)

    def tick(self) -> bool:
        """One look; returns True once the demo is ready (the banner may be printed)."""
        now = time.monotonic()
        if self.ready_at is None:
            if self.probe():
                self.say("the readings of this run are visible to SQL now")
            elif now - self.started < VISIBLE_WAIT_S:
                self._report_backfill(now, self.outbox.counts())
                return False
            self.ready_at = now
            if self.outages.every_s > 0:
                self._next_cut = now + self.outages.every_s
        counts = self.outbox.counts()
        self._outage(now, counts)
        self._report_backfill(now, counts)
        return True

    def heal(self) -> None:
        """End an outage early (the demo is stopping and the gateway should drain)."""
        if self.link.is_cut:
            self.link.heal()

    # -- outages -----------------------------------------------------------------------------------

    def _outage(self, now: float, counts: Counts) -> None:
        if self._cut_at is None and self._next_cut is not None and now >= self._next_cut:
            self.link.cut()
            self._cut_at = now
            self.say(f"uplink cut for {self.outages.length_s:g} s (simulated outage): the gateway buffers")
        elif self._cut_at is not None and now - self._cut_at >= self.outages.length_s:
            self.link.heal()
            self._cut_at = None
            self._next_cut = now + self.outages.every_s
            self._healed_ms = int(time.time() * 1000)
            self._healed_at = now
            self.say(
                f"uplink back after {self.outages.length_s:g} s: {counts.buffered:,} readings buffered "
                "by the gateway, now draining"
            )
        elif self._healed_ms is not None and _is_drained(counts, self._healed_ms):
            self.say(
                f"backlog drained in {now - self._healed_at:.1f} s: every reading of the outage is on the "
                f"server ({counts.acknowledged:,} acknowledged in all)"
            )
            self._healed_ms = None

    # -- backfill ----------------------------------------------------------------------------------

    def _report_backfill(self, now: float, counts: Counts) -> None:
        history = self.backfill
        if history is None or history.is_done or now < self._next_progress:
            return
        self._next_progress = now + PROGRESS_EVERY_S
        since, before = self._last_acknowledged
        rate = (counts.acknowledged - before) / max(now - since, 1e-3)
        self._last_acknowledged = (now, counts.acknowledged)
        stored = self.progress()
        reached_ms = stored.reached_ms if stored is not None else history.start_ms
        whole_ms = max(1, history.end_ms - history.start_ms)
        # The outbox counts every reading, history or live; what is still to come is what the
        # backfill has not produced yet (by the share of its span left) plus what waits in the buffer.
        unmade = history.expected * max(0, history.end_ms - reached_ms) / whole_ms
        left = unmade + counts.buffered
        if reached_ms >= history.end_ms and _is_drained(counts, history.end_ms):
            history.is_done = True
            self.say(
                f"backfill done: the history is on the server (about {human(history.expected)} readings, "
                f"{span(now - self.started)} since the start)"
            )
            return
        sent = max(0.0, history.expected - left)
        eta = f"about {span(left / rate)} left" if rate > 0 else "waiting for the uplink"
        self.say(f"backfill: {human(sent)} of {human(history.expected)} readings sent, {eta}")


def _is_drained(counts: Counts, since_ms: int) -> bool:
    """Nothing sampled before ``since_ms`` is still waiting in the outbox."""
    return counts.oldest_buffered_ms is None or counts.oldest_buffered_ms >= since_ms


class Analyst:
    """The demo's own SQL client on the server, with the analyst key it printed."""

    def __init__(self, url: str, key: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.key = key

    def rows(self, sql: str) -> list[list[Any]]:
        """Run ``sql``; raises ``OSError``/``http.client.HTTPException``, or ``ValueError`` on a refusal."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30.0)
        try:
            conn.request(
                "POST",
                "/api/v1/query",
                body=orjson.dumps({"sql": sql, "format": "json"}),
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise ValueError(f"the server answered {answer.status}: {body[:300]!r}")
        rows: list[list[Any]] = orjson.loads(body)["rows"]
        return rows
