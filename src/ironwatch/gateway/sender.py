"""The drain loop: oldest batches first, acknowledged ones forgotten, refused ones dead-lettered.

Batches go out in sequence order, ``in_flight`` at a time. After a failure the sender waits
(exponential backoff with jitter) and starts again from the oldest unacknowledged batch, so
nothing is skipped; a batch that did arrive but whose answer was lost is simply sent again and
answered as a duplicate.

A new outbox sends nothing until a heartbeat's answer has told it the highest batch number of this
gateway the server holds (see :meth:`Outbox.fix_numbering`). Over MQTT no answer comes while the
server is down (the broker takes the heartbeat for it), so the sender keeps asking; only after
:data:`NUMBERING_PATIENCE_S` without an answer (an MQTT broker whose access rules drop answers), or
at once when the server's answer has no number, does it keep the numbers it has, saying so.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ironwatch.gateway.outbox import Outbox
from ironwatch.gateway.uplink import Backoff, LinkDown, NoAnswer, Result, Uplink

log = logging.getLogger(__name__)

#: How long a new outbox asks the server for its last batch number before it numbers without it.
NUMBERING_PATIENCE_S = 3600.0


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
        heartbeat: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.uplink = uplink
        self.dead_letters = dead_letters
        self.backoff = backoff
        self.in_flight = in_flight
        self.stop = stop
        self.heartbeat = heartbeat
        self.clock = clock
        #: Time heartbeats went unanswered, and when the last unanswered one was sent.
        self._unanswered_s = 0.0
        self._unanswered_at: float | None = None
        self._was_quiet = False
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
        if self.outbox.numbering_is_provisional and not self._fix_numbering():
            return False
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

    def _fix_numbering(self) -> bool:
        """Number a new outbox's batches after the server's last one of this gateway; False (after
        the backoff's wait) while the server cannot be asked."""
        if self.outbox.numbering_is_moving:  # decided before a restart: finish the same move
            self.outbox.fix_numbering(None)
            return True
        try:
            last: int | None = self.uplink.last_batch_stored(self.heartbeat())
        except NoAnswer as exc:
            # Only the time the server's side takes heartbeats without answering counts: the clock
            # stops while the link is down, and goes on where it stopped.
            now = self.clock()
            if self._unanswered_at is not None:
                self._unanswered_s += now - self._unanswered_at
            elif self._unanswered_s == 0 and not exc.is_final:
                log.warning("%s; this new outbox sends nothing until the server answers", exc.message)
            self._unanswered_at = now
            if not exc.is_final and self._unanswered_s < NUMBERING_PATIENCE_S:
                self._wait_after(exc.message, quiet=True)
                return False
            log.error(
                "%s; numbering batches without the server's word. If the server already holds "
                "batches of gateway %s under these numbers, it will take them for duplicates",
                exc.message,
                self.outbox.gateway,
            )
            last = None
        except LinkDown as exc:
            self._unanswered_at = None
            self._wait_after(exc.message)
            return False
        shift = self.outbox.fix_numbering(last)
        self.backoff.reset()
        if shift:
            counts = self.outbox.counts()
            log.warning(
                "the server already holds batches up to %d of gateway %s (an earlier outbox): this "
                "new outbox numbers its batches from %d",
                last,
                self.outbox.gateway,
                counts.last_batch - counts.batches + 1,
            )
        return True

    def _wait_after(self, reason: str, at_least_s: float = 0.0, *, quiet: bool = False) -> None:
        self.stats.failures += 1
        self.stats.last_error = reason
        delay = self.backoff.next_delay_s(at_least_s)
        if not quiet and (self.stats.is_link_up or self.backoff.failures == 1 or self._was_quiet):
            log.warning("uplink: %s; retrying in %.1f s", reason, delay)
        self._was_quiet = quiet
        self.stats.is_link_up = False
        self.stop.wait(delay)

    def _settle(self, results: list[Result]) -> None:
        delivered = [r for r in results if r.kind == "delivered"]
        refused = [r for r in results if r.kind == "refused"]
        if refused:
            self.dead_letters.write(refused)
            self.outbox.dead_letter([r.batch for r in refused])
            for r in refused:
                log.error(
                    "batch %d refused (%s): kept in %s",
                    r.batch.seq,
                    r.reason or f"the server answered {r.status}",
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
        for result in failed:
            if result.batch.attempts == 0:  # from now on its readings count as sent
                self.outbox.mark_attempted(result.batch)
        self._wait_after(failed[0].reason, max((r.retry_after_s or 0.0) for r in failed))
