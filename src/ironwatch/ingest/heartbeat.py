"""Gateway heartbeats: checked, then kept as the gateway's latest state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ironwatch.errors import Forbidden, InvalidInput
from ironwatch.ingest.decode import _EPOCH, _MICROSECOND, TS_NO_OFFSET, TS_OUT_OF_RANGE, TS_UNPARSEABLE
from ironwatch.model import Principal, check_id

_INTS = ("buffer_depth", "last_batch", "dropped")
_TS_KINDS = "expected RFC 3339 text or epoch milliseconds"


def ts_us(field: str, value: object) -> int:
    """Epoch microseconds of RFC 3339 text with an offset, or of integer epoch milliseconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(field, _TS_KINDS)
    if isinstance(value, int):
        if not 0 <= value < 2**53:
            raise InvalidInput(field, TS_OUT_OF_RANGE)
        return value * 1000
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, TS_UNPARSEABLE) from None
    if moment.tzinfo is None:
        raise InvalidInput(field, TS_NO_OFFSET)
    return (moment - _EPOCH) // _MICROSECOND


def parse_heartbeat(doc: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """Check a heartbeat document and return the fields ironwatch keeps."""
    gateway = check_id("gateway", doc.get("gateway"))
    site = check_id("site", doc.get("site"))
    if not principal.may_write_site(site):
        raise Forbidden(f"this key may not write site {site}", {"field": "site"})
    if not principal.may_use_gateway(gateway):
        raise Forbidden(f"this key may not send for gateway {gateway}", {"field": "gateway"})
    ts = doc.get("ts")
    ts_us("ts", ts)
    beat: dict[str, Any] = {"gateway": gateway, "site": site, "ts": ts}
    for name in _INTS:
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(name, "expected a non-negative integer")
        beat[name] = value
    oldest = doc.get("oldest_buffered_ts")
    if oldest is not None:
        ts_us("oldest_buffered_ts", oldest)
        beat["oldest_buffered_ts"] = oldest
    sensors = doc.get("sensors")
    if sensors is not None:
        if not isinstance(sensors, dict):
            raise InvalidInput("sensors", "expected an object keyed by sensor id")
        for sensor, state in sensors.items():
            check_id(f"sensors.{sensor[:64]}", sensor)
            if not isinstance(state, dict):
                raise InvalidInput(f"sensors.{sensor}", "expected an object with last_ts and status")
            if state.get("last_ts") is not None:
                ts_us(f"sensors.{sensor}.last_ts", state["last_ts"])
            if state.get("status") is not None and not isinstance(state["status"], str):
                raise InvalidInput(f"sensors.{sensor}.status", "expected a string")
        beat["sensors"] = sensors
    return beat
