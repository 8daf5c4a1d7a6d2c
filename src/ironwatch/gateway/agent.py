"""The running gateway: sources sampled into the outbox, batches formed and drained, heartbeats sent.

Threads: one sampler per source, one batcher (cuts pending readings into numbered batches), one
sender (drains through the uplink), one heartbeat loop, an optional backfill, and the Prometheus
endpoint. ``run`` returns when ``stop`` is set, after it has cut the last readings into batches and
spent up to ``stop_drain_s`` sending what it can; the counts it returns are the outbox's, exact.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

from ironwatch.gateway.config import GatewayConfig, build_source
from ironwatch.gateway.metrics import serve_metrics
from ironwatch.gateway.outbox import Counts, Outbox, open_outbox
from ironwatch.gateway.sampler import Sampler, SensorBoard, backfill
from ironwatch.gateway.sender import DeadLetters, Sender
from ironwatch.gateway.source import Historical, Source
from ironwatch.gateway.uplink import Backoff, LinkDown, Uplink, open_uplink

log = logging.getLogger(__name__)

#: How long a stopping gateway keeps sending what is buffered.
STOP_DRAIN_S = 5.0


#: Outbox notes: the backfill's range, fixed by the first run, and each historical source's progress.
_RANGE_NOTE = "backfill_range"


def _progress_note(source_index: int) -> str:
    return f"backfill:{source_index}"


@dataclasses.dataclass(frozen=True)
class BackfillProgress:
    """A backfill's range and how far its history is stored in the outbox (epoch ms)."""

    start_ms: int
    end_ms: int
    reached_ms: int

    @property
    def is_stored(self) -> bool:
        """Every reading of the range is in the outbox (or already sent): nothing is left to make."""
        return self.reached_ms >= self.end_ms


def iso(ms: int | None) -> str | None:
    """RFC 3339 text of epoch milliseconds."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def heartbeat_doc(outbox: Outbox, now_ms: int, sensors: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat document (ARCHITECTURE.md) of the gateway that owns ``outbox``."""
    counts = outbox.counts()
    return {
        "gateway": outbox.gateway,
        "site": outbox.site,
        "ts": iso(now_ms),
        "buffer_depth": counts.buffered,
        "oldest_buffered_ts": iso(counts.oldest_buffered_ms),
        "last_batch": counts.last_batch,
        "dropped": counts.dropped,
        "sensors": sensors,
    }


class Gateway:
    """One gateway process; build it, ``run`` it, set ``stop`` to end it."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        sources: list[Source] | None = None,
        backfill_days: float = 0.0,
        stop_drain_s: float = STOP_DRAIN_S,
    ) -> None:
        self.config = config
        self.stop = threading.Event()
        self.stop_drain_s = stop_drain_s
        self.backfill_days = backfill_days
        self.sources = sources if sources is not None else config.build_sources()
        self.outbox: Outbox = open_outbox(
            config.buffer_path, gateway=config.gateway, site=config.site, max_bytes=config.buffer_max_bytes
        )
        self.board = SensorBoard()
        self.uplink: Uplink = open_uplink(config)
        self._sampling_stop = threading.Event()
        self.sampler = Sampler(self.sources, self.outbox, self.board, self._sampling_stop)
        self.sender = Sender(
            self.outbox,
            self.uplink,
            DeadLetters(config.dead_letter_path),
            Backoff(config.uplink.backoff_min_s, config.uplink.backoff_max_s),
            in_flight=config.uplink.in_flight,
            stop=self.stop,
            heartbeat=self.heartbeat,
        )
        self.heartbeats_sent = 0
        self.metrics_port: int | None = None
        self._threads: list[threading.Thread] = []
        self._metrics_server: Any = None

    # -- running -----------------------------------------------------------------------------------

    def run(self) -> Counts:
        """Run until ``stop`` is set; return the final counts."""
        log.info(
            "gateway %s of site %s: %d source(s), uplink %s, buffer %s",
            self.config.gateway,
            self.config.site,
            len(self.sources),
            self.uplink.target,
            self.config.buffer_path,
        )
        if self.config.metrics_port:  # 0 turns the endpoint off
            self._metrics_server, self.metrics_port = serve_metrics(
                self, self.config.metrics_host, self.config.metrics_port
            )
        if self.backfill_days > 0 and self.backfill_progress() is None:
            # Fixed before any source is opened: live readings begin after the history ends,
            # so the two never overlap (a reading stored twice under two batch numbers).
            end_ms = int(time.time() * 1000)
            start_ms = end_ms - int(self.backfill_days * 86_400_000)
            self.outbox.set_note(_RANGE_NOTE, f"{start_ms},{end_ms}")
        self.sampler.start()
        self._spawn(self._batch_loop, "batcher")
        self._spawn(self._heartbeat_loop, "heartbeat")
        if self.backfill_days > 0:
            self._spawn(self._backfill, "backfill")
        self.sender.start()
        try:
            self.stop.wait()
        finally:
            self._shut_down()
        return self.outbox.counts()

    def _spawn(self, target: Any, name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:  # logged as a structured line, not a bare traceback on stderr
                log.exception("gateway thread %s stopped", name)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _batch_loop(self) -> None:
        tick = min(0.25, self.config.batch_interval_s / 2)
        while not self._sampling_stop.is_set():
            try:
                if self.form_batches():
                    self.sender.wake.set()
            except Exception:  # the readings stay pending in the outbox; try again next tick
                log.exception("cutting batches failed")
            self._sampling_stop.wait(tick)

    def form_batches(self, *, is_final: bool = False) -> int:
        """Cut pending readings into batches (all of them when ``is_final``)."""
        age_s = 0.0 if is_final else self.config.batch_interval_s
        return self.outbox.form_batches(self.config.batch_max_readings, age_s)

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(0 if self.heartbeats_sent == 0 else self.config.heartbeat_interval_s):
            try:
                self.uplink.heartbeat(self.heartbeat())
                self.heartbeats_sent += 1
            except LinkDown as exc:
                log.info("heartbeat not sent: %s", exc.message)
                # Try again sooner than a full interval, the link may be back in a moment.
                self.stop.wait(min(5.0, self.config.heartbeat_interval_s))
            except Exception:  # never let the heartbeat thread die silently
                log.exception("heartbeat failed")
                self.stop.wait(min(5.0, self.config.heartbeat_interval_s))

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat document of ARCHITECTURE.md, from the outbox's exact counts."""
        now_ms = int(time.time() * 1000)
        return heartbeat_doc(self.outbox, now_ms, self.board.statuses(now_ms))

    def _backfill(self) -> None:
        # The range is fixed by the first run and kept in the outbox: a restart resumes it and
        # never backfills a second time (that would store the same history under new batches).
        progress = self.backfill_progress()
        if progress is None:
            return
        start_ms, end_ms = progress.start_ms, progress.end_ms
        for i, table in enumerate(self.config.sources):
            if self.stop.is_set():
                return
            # A separate instance: history must not move the live source's position.
            source = build_source(table, f"sources[{i}]", self.config.base_dir)
            if not hasattr(source, "history"):
                continue
            started = time.monotonic()
            added = backfill(
                cast(Historical, source),
                self.outbox,
                self.board,
                start_ms,
                end_ms,
                self.stop,
                key=_progress_note(i),
            )
            log.warning(
                "backfill of %s: %d readings from %s to %s in %.0f s",
                getattr(source, "name", table.get("type")),
                added,
                iso(start_ms),
                iso(end_ms),
                time.monotonic() - started,
            )

    def backfill_progress(self) -> BackfillProgress | None:
        """The backfill's range and how far its history is stored; None before any backfill began."""
        saved = self.outbox.note(_RANGE_NOTE)
        if saved is None:
            return None
        start_ms, end_ms = (int(part) for part in saved.split(","))
        reached = [
            int(note) if (note := self.outbox.note(_progress_note(i))) is not None else start_ms
            for i, source in enumerate(self.sources)
            if hasattr(source, "history")
        ]
        return BackfillProgress(start_ms, end_ms, min(reached, default=end_ms))

    def _shut_down(self) -> None:
        self._sampling_stop.set()
        self.sampler.join()
        for thread in self._threads:
            thread.join(10.0)
        self.form_batches(is_final=True)
        self.sender.join(10.0)
        # Spend a few seconds sending what is left; a link that is down ends this at once.
        deadline = time.monotonic() + self.stop_drain_s
        while time.monotonic() < deadline and self.outbox.counts().batches:
            if not self.sender.drain_once() and not self.sender.stats.is_link_up:
                break
        self.uplink.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
