"""What one write-ahead log record holds: the header of one or more batches, their good readings and
their quarantined rows.

Payload layout: ``u32 header length | header JSON | Arrow IPC of good readings | Arrow IPC of
quarantined rows`` (the IPC parts' lengths are in the header; either may be empty).

A record carries several batches when they were admitted together (MQTT messages that arrived while
the previous group was being written): their good readings are one table, in the order of the
header's ``parts``, each part saying whose batch the next ``rows`` readings are. Records written
before there were parts name one batch in ``gateway``, ``site`` and ``batch``; they still read back.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import orjson
import pyarrow as pa

from ironwatch.ingest.validate import WAL_SCHEMA
from ironwatch.model import QUARANTINE_SCHEMA, empty_table

_LEN = struct.Struct("<I")
# Explicit options: without them pyarrow reads two environment variables on every writer it opens.
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions()
_READ_OPTIONS = pa.ipc.IpcReadOptions()
# Tables are immutable, so one empty table per schema serves every record (building one costs ~50 us).
_EMPTY = {id(schema): empty_table(schema) for schema in (WAL_SCHEMA, QUARANTINE_SCHEMA)}


@dataclasses.dataclass(frozen=True)
class Part:
    """One batch of a record: who sent it, and how many of the record's good readings are its."""

    gateway: str
    site: str
    batch: int
    rows: int


@dataclasses.dataclass
class Record:
    """Accepted batches (one :class:`Part` each), or one quarantined message (no parts)."""

    tenant: str
    transport: str
    received_at_us: int
    parts: list[Part]
    good: pa.Table
    quarantine: pa.Table

    def batches(self) -> Iterator[tuple[Part, pa.Table]]:
        """Each part with its own good readings (zero-copy slices)."""
        offset = 0
        for part in self.parts:
            yield part, self.good.slice(offset, part.rows)
            offset += part.rows


def _ipc(table: pa.Table) -> bytes:
    if table.num_rows == 0:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _table(data: bytes, schema: pa.Schema) -> pa.Table:
    if not data:
        empty = _EMPTY.get(id(schema))
        return empty if empty is not None else empty_table(schema)
    return pa.ipc.open_stream(data, options=_READ_OPTIONS).read_all()


def encode(record: Record) -> bytes:
    """Serialise a record as a log payload."""
    good, bad = _ipc(record.good), _ipc(record.quarantine)
    header = orjson.dumps(
        {
            "tenant": record.tenant,
            "transport": record.transport,
            "received_at_us": record.received_at_us,
            "parts": [[p.gateway, p.site, p.batch, p.rows] for p in record.parts],
            "good_bytes": len(good),
            "bad_bytes": len(bad),
        }
    )
    return b"".join((_LEN.pack(len(header)), header, good, bad))


def decode(payload: bytes) -> Record:
    """Read a record back from a log payload."""
    (n,) = _LEN.unpack_from(payload, 0)
    header = orjson.loads(payload[_LEN.size : _LEN.size + n])
    start = _LEN.size + n
    good_end = start + header["good_bytes"]
    good = _table(payload[start:good_end], WAL_SCHEMA)
    if "parts" in header:
        parts = [Part(gateway, site, batch, rows) for gateway, site, batch, rows in header["parts"]]
    elif header["batch"] is not None:  # written before records had parts: one batch
        parts = [Part(header["gateway"], header["site"], header["batch"], good.num_rows)]
    else:
        parts = []
    return Record(
        tenant=header["tenant"],
        transport=header["transport"],
        received_at_us=header["received_at_us"],
        parts=parts,
        good=good,
        quarantine=_table(payload[good_end : good_end + header["bad_bytes"]], QUARANTINE_SCHEMA),
    )
