"""Gateway heartbeats: checked, then kept as the gateway's latest state."""

from __future__ import annotations

from typing import Any

from ironwatch.errors import Forbidden, InvalidInput
from ironwatch.model import Principal, check_id

_INTS = ("buffer_depth", "last_batch", "dropped")


def parse_heartbeat(doc: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """Check a heartbeat document and return the fields ironwatch keeps."""
    gateway = check_id("gateway", doc.get("gateway"))
    site = check_id("site", doc.get("site"))
    if not principal.may_write_site(site):
        raise Forbidden(f"this key may not write site {site}", {"field": "site"})
    if not principal.may_use_gateway(gateway):
        raise Forbidden(f"this key may not send for gateway {gateway}", {"field": "gateway"})
    ts = doc.get("ts")
    if not isinstance(ts, str | int) or isinstance(ts, bool):
        raise InvalidInput("ts", "expected RFC 3339 text or epoch milliseconds")
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
        if not isinstance(oldest, str | int) or isinstance(oldest, bool):
            raise InvalidInput("oldest_buffered_ts", "expected RFC 3339 text or epoch milliseconds")
        beat["oldest_buffered_ts"] = oldest
    sensors = doc.get("sensors")
    if sensors is not None:
        if not isinstance(sensors, dict):
            raise InvalidInput("sensors", "expected an object keyed by sensor id")
        for sensor, state in sensors.items():
            check_id(f"sensors.{sensor[:64]}", sensor)
            if not isinstance(state, dict):
                raise InvalidInput(f"sensors.{sensor}", "expected an object with last_ts and status")
        beat["sensors"] = sensors
    return beat
