"""The drain loop: oldest batches first, acknowledged ones forgotten, refused ones dead-lettered.

Batches go out in sequence order, ``in_flight`` at a time. After a failure the sender waits
(exponential backoff with jitter) and starts again from the oldest unacknowledged batch, so
nothing is skipped; a batch that did arrive but whose answer was lost is simply sent again and
answered as a duplicate.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

import orjson

from ironwatch.gateway.outbox import Outbox
from ironwatch.gateway.uplink import Backoff, Result, Uplink

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SendStats:
    """Counts of this run (the outbox keeps the lasting ones)."""

    batches_delivered: int = 0
    duplicates: int = 0
    #: Batches answered as duplicates on their first send: numbers the server had from another outbox.
    number_collisions: int = 0
    rejected_readings: int = 0
    failures: int = 0
    is_link_up: bool = False
    last_error: str = ""


class DeadLetters:
    """The JSON-lines file of batches the server refused, with its answers and the payloads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, results: list[Result]) -> None:
        """Append and fsync before the batches leave the outbox."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = b"".join(
            orjson.dumps(
                {
                    "batch": r.batch.seq,
                    "readings": r.batch.readings,
                    "status": r.status,
                    "answer": r.answer,
                    "refused_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "payload_gzip_base64": base64.b64encode(r.batch.payload).decode(),
                }
            )
            + b"\n"
            for r in results
        )
        with open(self.path, "ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


class Sender:
    """Drains the outbox through the uplink until stopped."""

    def __init__(
        self,
        outbox: Outbox,
        uplink: Uplink,
        dead_letters: DeadLetters,
        backoff: Backoff,
        *,
        in_flight: int,
        stop: threading.Event,
    ) -> None:
        self.outbox = outbox
        self.uplink = uplink
        self.dead_letters = dead_letters
        self.backoff = backoff
        self.in_flight = in_flight
        self.stop = stop
        self.stats = SendStats()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the drain loop in a thread."""
        self._thread = threading.Thread(target=self.run, name="sender", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for the loop to end after ``stop`` is set."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        """Send until ``stop`` is set."""
        while not self.stop.is_set():
            try:
                sent = self.drain_once()
            except Exception:  # a bug or a broken outbox: the sender must not die silently
                log.exception("sending failed; retrying")
                self.stats.failures += 1
                self.stop.wait(self.backoff.next_delay_s())
                continue
            if not sent:
                self.wake.wait(0.2)
                self.wake.clear()

    def drain_once(self) -> bool:
        """Send the next batches once; False when there was nothing to send or the send failed."""
        batches = self.outbox.next_batches(self.in_flight)
        if not batches:
            return False
        results = self.uplink.send(batches)
        self._settle(results)
        failed = [r for r in results if r.kind == "failed"]
        if failed:
            self._fail(failed)
            return False
        if not self.stats.is_link_up and self.stats.failures:
            buffered = self.outbox.counts().buffered
            log.warning("uplink %s is back; %d readings still buffered", self.uplink.target, buffered)
        self.stats.is_link_up = True
        self.backoff.reset()
        return True

    def _settle(self, results: list[Result]) -> None:
        delivered = [r for r in results if r.kind == "delivered"]
        refused = [r for r in results if r.kind == "refused"]
        if refused:
            self.dead_letters.write(refused)
            self.outbox.dead_letter([r.batch for r in refused])
            for r in refused:
                log.error(
                    "batch %d refused by the server (%s): kept in %s",
                    r.batch.seq,
                    r.status,
                    self.dead_letters.path,
                )
        if delivered:
            self.outbox.acknowledge([r.batch for r in delivered])
            self.stats.batches_delivered += len(delivered)
            for r in delivered:
                if isinstance(r.answer, dict) and r.answer.get("duplicate"):
                    self.stats.duplicates += 1
                    if r.batch.attempts == 0 and not r.batch.is_tombstone:
                        self.stats.number_collisions += 1
                        log.error(
                            "batch %d (%d readings) was answered as a duplicate on its first send: "
                            "the server already holds a batch %d of this gateway. Unless it was sent "
                            "just before the gateway was killed, a new outbox restarted the numbering "
                            "and these readings were not stored; give the gateway a new id",
                            r.batch.seq,
                            r.batch.readings,
                            r.batch.seq,
                        )
                self.stats.rejected_readings += r.rejected

    def _fail(self, failed: list[Result]) -> None:
        first = failed[0]
        self.stats.failures += 1
        self.stats.last_error = first.reason
        for result in failed:
            if result.batch.attempts == 0:  # from now on its readings count as sent
                self.outbox.mark_attempted(result.batch)
        delay = self.backoff.next_delay_s(max((r.retry_after_s or 0.0) for r in failed))
        if self.stats.is_link_up or self.backoff.failures == 1:
            log.warning("uplink: %s; retrying in %.1f s", first.reason, delay)
        self.stats.is_link_up = False
        self.stop.wait(delay)
