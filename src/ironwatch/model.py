"""Domain types shared by every package: ids, roles, principals and the reading schema."""

from __future__ import annotations

import dataclasses
import enum
import re
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from ironwatch.errors import InvalidInput

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ID = re.compile(ID_PATTERN)
ID_MAX_LENGTH = 64
# ID_PATTERN as byte tables, for checking a whole Arrow string column at once (bytes of multi-byte
# UTF-8 characters are all >= 0x80, so they are refused like any other character outside the set).
_ALNUM = np.zeros(256, dtype=bool)
for _chars in (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz", b"0123456789"):
    _ALNUM[np.frombuffer(_chars, dtype=np.uint8)] = True
_ID_BYTE = _ALNUM.copy()
_ID_BYTE[np.frombuffer(b"._-", dtype=np.uint8)] = True
_ID_BYTES = bytes(np.flatnonzero(_ID_BYTE).astype(np.uint8))

#: Readings older than this are almost always epoch seconds sent as milliseconds.
EARLIEST_TS_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)

TS_TYPE = pa.timestamp("us", tz="UTC")
NAME_TYPE = pa.dictionary(pa.int32(), pa.string())

#: Columns of a raw reading file, as in ARCHITECTURE.md (site, date and hour are Hive partitions).
READINGS_SCHEMA = pa.schema(
    [
        ("ts", TS_TYPE),
        ("sensor", NAME_TYPE),
        ("metric", NAME_TYPE),
        ("value", pa.float64()),
        ("gateway", NAME_TYPE),
        ("batch", pa.int64()),
        ("received_at", TS_TYPE),
    ]
)

#: Rejected readings and messages, with the reason; partitioned by the day they were received.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("received_at", TS_TYPE),
        ("transport", pa.string()),
        ("gateway", pa.string()),
        ("site", pa.string()),
        ("batch", pa.int64()),
        ("index", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("ts", pa.string()),
        ("sensor", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("raw", pa.string()),
    ]
)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of no rows; unlike ``schema.empty_table()`` it does not import pandas (~180 ms, ~40 MiB)."""
    return pa.Table.from_batches([], schema=schema)


def warm_up_arrow() -> None:
    """Load now what pyarrow loads on its first conversion of an array.

    ``pa.array`` imports pandas, when it is installed, the first time it is called: ~0.2-0.5 s of
    CPU with the interpreter's lock held. Ingest converts arrays for every batch, so a process that
    does not do this while it starts pays it on its first batch or segment, under load.
    """
    pa.array(np.zeros(1))


def gateway_topic(tenant: str, site: str, gateway: str, kind: str) -> str:
    """The MQTT topic of one gateway (ARCHITECTURE.md): ``ironwatch/{tenant}/{site}/{gateway}/{kind}``,
    where ``kind`` is ``readings`` or ``heartbeat`` (the gateway publishes) or ``answer`` (the
    server answers heartbeats there); ``+`` in a level makes a subscription filter."""
    return f"ironwatch/{tenant}/{site}/{gateway}/{kind}"


def is_id(text: object) -> bool:
    """Whether ``text`` is a valid id (safe in paths and MQTT topics)."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def _offsets_and_data(names: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets of a string column's slice and its whole data buffer, as numpy views."""
    _validity, offsets_buf, data_buf = names.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[names.offset : names.offset + len(names) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def valid_ids(names: pa.Array) -> np.ndarray:
    """Per string of an Arrow column, whether it is a valid id (null: not valid), with numpy alone.

    The same answer as :func:`is_id` for every string, at a few microseconds per thousand: the
    lengths come from the offsets, the first characters and every byte from lookup tables.
    """
    if not pa.types.is_string(names.type):
        names = names.cast(pa.string())
    if len(names) == 0:
        return np.zeros(0, dtype=bool)
    offsets, data = _offsets_and_data(names)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    ok: np.ndarray = (lengths >= 1) & (lengths <= ID_MAX_LENGTH)
    if names.null_count:
        ok &= names.is_valid().to_numpy(zero_copy_only=False)
    ok[ok] &= _ALNUM[data[starts[ok]]]
    # A string is clean when no byte of it is outside the set: count bad bytes up to each offset.
    span = data[offsets[0] : offsets[-1]]
    bad_before = np.concatenate(([0], np.cumsum(~_ID_BYTE[span], dtype=np.int64)))
    ok &= bad_before[ends - offsets[0]] == bad_before[starts - offsets[0]]
    return ok


def all_valid_ids(names: pa.Array) -> bool:
    """Whether every string of an Arrow column is a valid id (the good batch's cheap check)."""
    if names.null_count or len(names) == 0:
        return len(names) == 0
    if not pa.types.is_string(names.type):
        return bool(valid_ids(names).all())
    offsets, data = _offsets_and_data(names)
    lengths = np.diff(offsets)
    if lengths.min() < 1 or lengths.max() > ID_MAX_LENGTH:
        return False
    if data[offsets[0] : offsets[-1]].tobytes().translate(None, _ID_BYTES):
        return False  # some byte outside the set
    firsts = data[offsets[:-1]].tobytes()
    return not (b"." in firsts or b"_" in firsts or b"-" in firsts)


def check_id(field: str, text: object) -> str:
    """Return ``text`` if it is a valid id, else raise :class:`InvalidInput` naming ``field``."""
    if not isinstance(text, str):
        raise InvalidInput(field, f"expected a string id, got {type(text).__name__}")
    if not _ID.fullmatch(text):  # not match(): "$" also matches before a final newline
        raise InvalidInput(field, f"{text[:80]!r} does not match {ID_PATTERN}")
    return text


class Role(enum.StrEnum):
    """What an API key may do."""

    ADMIN = "admin"
    ANALYST = "analyst"
    MECHANIC = "mechanic"
    VIEWER = "viewer"
    GATEWAY = "gateway"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's tenant, role and optional site/gateway scope."""

    tenant: str
    role: Role
    key_id: str
    site: str | None = None
    gateway: str | None = None

    def may_write_site(self, site: str) -> bool:
        return self.site is None or self.site == site

    def may_use_gateway(self, gateway: str) -> bool:
        return self.gateway is None or self.gateway == gateway


def utc_now_us() -> int:
    """Current time as epoch microseconds."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)
