"""Domain types shared by every package: ids, roles, principals and the reading schema."""

from __future__ import annotations

import dataclasses
import enum
import re
from datetime import UTC, datetime

import pyarrow as pa

from ironwatch.errors import InvalidInput

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ID = re.compile(ID_PATTERN)

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


def is_id(text: object) -> bool:
    """Whether ``text`` is a valid id (safe in paths and MQTT topics)."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


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
