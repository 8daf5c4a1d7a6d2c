"""What every gateway source is: something that yields readings in columns when it is read.

A source (the simulator, a Modbus PLC, an OPC UA server, a replayed file) is read by the gateway's
sampler at the source's own ``interval_s``. ``read`` returns the readings taken since the previous
read as one Arrow table with :data:`SAMPLE_SCHEMA`; the sampler puts them in the outbox, and only
then do they count as sampled. A source never blocks the sampler for long: a PLC that does not
answer raises :class:`SourceUnavailable` (the sampler logs it once, counts it, and tries again at
the next interval), so the other sources go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa

from ironwatch.errors import IronwatchError

#: One poll's readings: ``ts_ms`` is epoch milliseconds (the PLC's or the simulator's time).
SAMPLE_SCHEMA = pa.schema(
    [
        ("ts_ms", pa.int64()),
        ("sensor", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)


class SourceUnavailable(IronwatchError):
    """A source cannot be read now (the PLC went away, the server refused); retrying may help."""

    code = "source_unavailable"
    retryable = True

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"source {source}: {reason}", {"source": source})
        self.source = source
        self.reason = reason


def empty_sample() -> pa.Table:
    """A table with no readings, in the sample schema."""
    return SAMPLE_SCHEMA.empty_table()


@runtime_checkable
class Source(Protocol):
    """A place readings come from; the gateway reads each source from one thread only."""

    #: Short name for logs, metrics and ``gateway check`` (``simulator``, ``modbus 10.0.0.5:502``).
    name: str
    #: How often the sampler calls ``read``.
    interval_s: float

    def open(self) -> None:
        """Connect, or raise :class:`SourceUnavailable`; the sampler calls ``read`` only after this."""

    def read(self, now_ms: int) -> pa.Table:
        """Readings taken since the last call, at most up to ``now_ms``; empty when there are none.

        Raises :class:`SourceUnavailable` when the source cannot be read now; the next call
        reconnects by itself.
        """

    def declared_rates(self) -> dict[str, float]:
        """Each sensor this source reports, with the readings per minute it should deliver per metric."""

    def check(self) -> None:
        """Probe the source once (connect, read one value) for ``ironwatch gateway check``.

        Raises :class:`SourceUnavailable` or :class:`ironwatch.errors.ConfigError` with a message
        a person can act on.
        """

    def close(self) -> None:
        """Release connections and threads; safe to call twice."""


class Historical(Protocol):
    """A source that can also produce history quickly (the simulator's ``--backfill DAYS``)."""

    def history(self, start_ms: int, end_ms: int, chunk_s: float) -> Iterator[pa.Table]:
        """Readings of ``[start_ms, end_ms)`` in tables of about ``chunk_s`` of source time each.

        After the history, ``read`` goes on from ``end_ms``: history and live readings never overlap.
        """
