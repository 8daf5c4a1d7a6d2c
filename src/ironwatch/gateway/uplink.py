"""The gateway's way to the server: the ``Uplink`` contract, the results of a send, and the backoff.

An uplink sends batches (their ready-made gzip envelopes) and heartbeats; a heartbeat's answer
tells a new outbox which batch numbers the server already holds. Each batch comes back as
one :class:`Result`:

- ``delivered``: the server holds it durably (HTTP 200, or an MQTT PUBACK from the server's
  subscriber); the outbox forgets it.
- ``refused``: the server will never take *this batch* (HTTP 400, 413, 415, 422; over MQTT a batch
  larger than the broker's Maximum Packet Size, or a PUBACK with reason code 149 or 153): it goes
  to the dead-letter file with the answer, and the gateway goes on.
- ``failed``: anything a later try may fix (no connection, timeout, 5xx, 429, and also 401, 403 and
  404, which are about the gateway's key or URL rather than the batch: dead-lettering the whole
  backlog because a key was revoked would throw away what an operator can still save by fixing
  the key). The batch stays, and the sender backs off.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from ironwatch.errors import IronwatchError
from ironwatch.gateway.config import GatewayConfig
from ironwatch.gateway.outbox import Batch

#: HTTP answers that condemn the batch itself; every other 4xx is retried.
REFUSING_STATUSES = frozenset({400, 413, 415, 422})


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of one batch."""

    batch: Batch
    kind: Literal["delivered", "refused", "failed"]
    status: int | None = None
    answer: Any = None
    reason: str = ""
    retry_after_s: float | None = None

    @property
    def rejected(self) -> int:
        """Readings the server put in quarantine (a delivered batch's ``rejected``)."""
        if self.kind == "delivered" and isinstance(self.answer, dict):
            return int(self.answer.get("rejected", 0))
        return 0


class LinkDown(IronwatchError):
    """The uplink cannot reach the server now."""

    code = "link_down"
    retryable = True


class NoAnswer(LinkDown):
    """The server took a heartbeat but gave no usable answer to it. ``is_final`` when asking again
    cannot help (an answer came without the number); otherwise none came yet (over MQTT: nothing on
    the answer topic, the server may be down while the broker holds its session)."""

    code = "no_answer"

    def __init__(self, message: str, *, is_final: bool) -> None:
        super().__init__(message)
        self.is_final = is_final


class Uplink(Protocol):
    """Sends batches and heartbeats to the server."""

    #: ``http://host:port`` or ``mqtt://host:port`` (no credentials), for messages.
    target: str

    def send(self, batches: Sequence[Batch]) -> list[Result]:
        """Send batches (in sequence order, up to ``in_flight`` at once); one result per batch, in order."""

    def heartbeat(self, doc: dict[str, Any]) -> None:
        """Send one heartbeat; raises :class:`LinkDown` when it cannot."""

    def last_batch_stored(self, heartbeat: dict[str, Any]) -> int | None:
        """Send a heartbeat and return the server's answer to it: the highest batch number of this
        gateway it holds (None: none). Raises :class:`LinkDown`, or :class:`NoAnswer` when the
        heartbeat arrived but no answer came."""

    def check(self, heartbeat: dict[str, Any]) -> None:
        """Reach the server once with a real heartbeat, proving the credentials and that the
        server's answer comes back; raises :class:`LinkDown` (:class:`NoAnswer` for no answer)."""

    def close(self) -> None:
        """Close connections."""


def last_batch_stored(answer: Any, target: str) -> int | None:
    """``last_batch_stored`` of a heartbeat's answer; :class:`NoAnswer` when the answer has none."""
    if isinstance(answer, dict) and "last_batch_stored" in answer:
        value = answer["last_batch_stored"]
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
    raise NoAnswer(
        f"{target}: the heartbeat's answer has no valid last_batch_stored: {str(answer)[:200]}", is_final=True
    )


class Backoff:
    """Exponential backoff with full jitter: after n failures, wait uniformly in ``[min, min * 2**n]``."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay_s(self, at_least_s: float | None = None) -> float:
        """The wait before the next try (at least ``at_least_s``, a server's Retry-After)."""
        ceiling = min(self.max_s, self.min_s * 2**self.failures)
        self.failures += 1
        delay = self._rng.uniform(self.min_s, max(self.min_s, ceiling))
        return max(delay, at_least_s or 0.0)

    def reset(self) -> None:
        """A try succeeded: start again from the shortest wait."""
        self.failures = 0


def open_uplink(config: GatewayConfig, *, is_probe: bool = False) -> Uplink:
    """The uplink for the configured URL scheme. A probe (``gateway check``) may run next to the
    gateway itself: over MQTT it connects under its own client id, with a session that ends with it."""
    if config.uplink.is_mqtt:
        from ironwatch.gateway.uplink_mqtt import MqttUplink

        return MqttUplink(config, is_probe=is_probe)
    from ironwatch.gateway.uplink_http import HttpUplink

    return HttpUplink(config)
