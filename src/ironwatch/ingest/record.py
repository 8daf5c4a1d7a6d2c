"""What one write-ahead log record holds: a batch's header, its good readings and its quarantined rows.

Payload layout: ``u32 header length | header JSON | Arrow IPC of good readings | Arrow IPC of
quarantined rows`` (the IPC parts' lengths are in the header; either may be empty).
"""

from __future__ import annotations

import dataclasses
import struct

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


@dataclasses.dataclass
class Record:
    """One accepted batch (``batch`` set) or one quarantined message (``batch`` None)."""

    tenant: str
    transport: str
    received_at_us: int
    gateway: str | None
    site: str | None
    batch: int | None
    good: pa.Table
    quarantine: pa.Table


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
            "gateway": record.gateway,
            "site": record.site,
            "batch": record.batch,
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
    return Record(
        tenant=header["tenant"],
        transport=header["transport"],
        received_at_us=header["received_at_us"],
        gateway=header["gateway"],
        site=header["site"],
        batch=header["batch"],
        good=_table(payload[start:good_end], WAL_SCHEMA),
        quarantine=_table(payload[good_end : good_end + header["bad_bytes"]], QUARANTINE_SCHEMA),
    )
