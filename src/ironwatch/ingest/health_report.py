"""Gateway and sensor health as users see it: statuses, JSON documents and Arrow tables for SQL.

A gateway is ``online`` while it was heard from (a batch or a heartbeat) within
``offline_after_heartbeats x heartbeat_interval_s``, else ``offline``. A sensor's status is the
first of these that holds:

- ``link_down``: the gateway that carries its readings is offline (so nothing is known of it);
- ``unknown``: no gateway has ever carried a reading of it;
- ``delayed``: it would be silent or stale, but its gateway reports readings still buffered
  (the backlog after an outage is on its way);
- ``silent``: no reading within ``silent_after_s`` (by event time, or as the gateway's last
  heartbeat reports it);
- ``stale``: its rate over ``rate_window_s`` is below ``stale_ratio x`` its declared rate;
- ``ok``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ironwatch.errors import InvalidInput, NotFound
from ironwatch.ingest.health import GatewayState, Tracker
from ironwatch.ingest.heartbeat import ts_us
from ironwatch.model import TS_TYPE
from ironwatch.store import Gateway, Store, declared_rates

Row = dict[str, Any]

SENSOR_STATUSES = ("ok", "stale", "silent", "delayed", "link_down", "unknown")
GATEWAY_STATUSES = ("online", "offline")


def _iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC).isoformat()


def _us(value: Any) -> int | None:
    try:
        return None if value is None else ts_us("ts", value)
    except InvalidInput:
        return None  # heartbeats kept before their timestamps were checked


def _ago_s(now_us: int, us: int | None) -> float | None:
    return None if us is None else round((now_us - us) / 1e6, 3)


def _newest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _gateway_row(tracker: Tracker, tenant: str, g: Gateway, state: GatewayState | None, now_us: int) -> Row:
    hs = tracker.settings
    offline_after_us = float(hs.heartbeat_interval_s) * float(hs.offline_after_heartbeats) * 1e6
    registered_seen = None if g.last_seen_at is None else int(g.last_seen_at.timestamp() * 1e6)
    last_seen = _newest(state.last_seen_us if state else None, registered_seen)
    beat = state.heartbeat if state else g.last_heartbeat
    received = tracker.received(tenant, g.gateway)
    last = received.last
    missing = received.gaps()
    reported = beat.get("last_batch") if beat else None
    undelivered = None
    if reported is not None and last is not None and reported > last:
        undelivered = [last + 1, reported]
        missing.append(undelivered)
    backlog = None
    if beat is not None:
        backlog = {
            "buffer_depth": beat.get("buffer_depth"),
            "oldest_buffered_ts": _iso(_us(beat.get("oldest_buffered_ts"))),
            "reported_last_batch": reported,
            "undelivered_batches": undelivered,
            "dropped": beat.get("dropped"),
        }
    return {
        "gateway": g.gateway,
        "site": g.site,
        "status": "online" if last_seen is not None and now_us - last_seen <= offline_after_us else "offline",
        "last_seen_at_us": last_seen,
        "last_batch": last,
        "last_batch_at_us": state.last_batch_at_us if state else None,
        "received_batches": received.ranges(),
        "missing_batches": missing,
        "missing_batch_count": sum(hi - lo + 1 for lo, hi in missing),
        "backlog": backlog,
        "has_backlog": bool(undelivered or (beat and beat.get("buffer_depth"))),
        "last_heartbeat": beat,
        # The gateways table keeps the time of every heartbeat, so it survives any restart.
        "last_heartbeat_at_us": registered_seen or (state.heartbeat_at_us if state else None),
        "registered_at_us": int(g.registered_at.timestamp() * 1e6),
        "registered_by": g.registered_by,
    }


def _gateway_rows(store: Store, tracker: Tracker, tenant: str, now_us: int) -> dict[str, Row]:
    states = tracker.gateways(tenant)
    return {
        g.gateway: _gateway_row(tracker, tenant, g, states.get(g.gateway), now_us)
        for g in store.gateways(tenant)
    }


def _sensor_rows(
    store: Store, tracker: Tracker, tenant: str, gateways: dict[str, Row], now_us: int
) -> list[Row]:
    hs = tracker.settings
    registered = {(s["site"], s["sensor"]): s for s in store.sensors(tenant)}
    rates = declared_rates(store, tenant)
    tracked = {(s.site, s.sensor): s for s in tracker.sensors(tenant, now_us)}
    rows = []
    for key in sorted(registered.keys() | tracked.keys()):
        site, sensor = key
        state, reg = tracked.get(key), registered.get(key)
        gateway = state.gateway if state and state.gateway else (reg or {}).get("first_gateway")
        gw = gateways.get(gateway) if gateway else None
        beat = (gw or {}).get("last_heartbeat") or {}
        reported = (beat.get("sensors") or {}).get(sensor)
        reported_last = _us(reported.get("last_ts")) if isinstance(reported, dict) else None
        last_ts = state.last_ts_us if state else None
        declared = rates.get(key, float(hs.default_rate_per_min))
        rate = state.rate_per_min if state else None
        newest = _newest(last_ts, reported_last)
        if gw is None:
            status = "unknown"
        elif gw["status"] == "offline":
            status = "link_down"
        else:
            is_silent = newest is None or now_us - newest > float(hs.silent_after_s) * 1e6
            is_stale = rate is not None and rate < float(hs.stale_ratio) * declared
            status = "silent" if is_silent else "stale" if is_stale else "ok"
            if status != "ok" and gw["has_backlog"]:
                status = "delayed"
        rows.append(
            {
                "site": site,
                "sensor": sensor,
                "status": status,
                "gateway": gateway,
                "gateway_status": gw["status"] if gw else None,
                "last_ts_us": last_ts,
                "last_received_at_us": state.last_received_us if state else None,
                "silent_for_s": _ago_s(now_us, newest),
                "rate_per_min": None if rate is None else round(rate, 3),
                "declared_rate_per_min": declared,
                "readings": state.readings if state else 0,
                "reported": reported if isinstance(reported, dict) else None,
                "registration": reg["status"] if reg else None,
                "first_seen_at": reg["first_seen_at"] if reg else None,
            }
        )
    return rows


def _json(row: Row) -> dict[str, Any]:
    """Times in µs become ISO 8601 text under the name without ``_us``."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name.endswith("_us"):
            out[name[:-3]] = _iso(value)
        elif name != "has_backlog":
            out[name] = value
    return out


def check_status(status: str | None, allowed: tuple[str, ...]) -> None:
    """Refuse a ``status`` filter that names no status."""
    if status is not None and status not in allowed:
        raise InvalidInput("status", f"{status!r} is not one of {', '.join(allowed)}")


def _counts(rows: list[Row]) -> dict[str, int]:
    counts = dict.fromkeys(SENSOR_STATUSES, 0)
    for row in rows:
        counts[row["status"]] += 1
    return counts


def gateways(store: Store, tracker: Tracker, tenant: str, status: str | None = None) -> list[dict[str, Any]]:
    """Health of a tenant's registered gateways, each with its sensors counted by status."""
    check_status(status, GATEWAY_STATUSES)
    now_us = tracker.clock()
    rows = _gateway_rows(store, tracker, tenant, now_us)
    sensors = _sensor_rows(store, tracker, tenant, rows, now_us)
    out = []
    for gateway, row in rows.items():
        if status is None or row["status"] == status:
            mine = [s for s in sensors if s["gateway"] == gateway]
            out.append(
                {
                    **_json(row),
                    "silent_for_s": _ago_s(now_us, row["last_seen_at_us"]),
                    "sensor_counts": _counts(mine),
                }
            )
    return out


def gateway(store: Store, tracker: Tracker, tenant: str, gateway_id: str) -> dict[str, Any]:
    """Health of one gateway with every sensor it carries; :class:`NotFound` if not registered."""
    now_us = tracker.clock()
    rows = _gateway_rows(store, tracker, tenant, now_us)
    row = rows.get(gateway_id)
    if row is None:
        raise NotFound("gateway", gateway_id)
    mine = [s for s in _sensor_rows(store, tracker, tenant, rows, now_us) if s["gateway"] == gateway_id]
    return {
        **_json(row),
        "silent_for_s": _ago_s(now_us, row["last_seen_at_us"]),
        "sensor_counts": _counts(mine),
        "sensors": [_json(s) for s in mine],
    }


def sensors(
    store: Store,
    tracker: Tracker,
    tenant: str,
    *,
    status: str | None = None,
    site: str | None = None,
    gateway: str | None = None,
) -> list[dict[str, Any]]:
    """Health of a tenant's sensors, optionally only those of one status, site or gateway."""
    check_status(status, SENSOR_STATUSES)
    now_us = tracker.clock()
    rows = _sensor_rows(store, tracker, tenant, _gateway_rows(store, tracker, tenant, now_us), now_us)
    return [
        _json(r)
        for r in rows
        if (status is None or r["status"] == status)
        and (site is None or r["site"] == site)
        and (gateway is None or r["gateway"] == gateway)
    ]


SENSORS_SCHEMA = pa.schema(
    [
        ("site", pa.string()),
        ("sensor", pa.string()),
        ("status", pa.string()),
        ("gateway", pa.string()),
        ("gateway_status", pa.string()),
        ("last_ts", TS_TYPE),
        ("last_received_at", TS_TYPE),
        ("silent_for_s", pa.float64()),
        ("rate_per_min", pa.float64()),
        ("declared_rate_per_min", pa.float64()),
        ("readings", pa.int64()),
        ("registration", pa.string()),
    ]
)

_RANGE = pa.struct([("first", pa.int64()), ("last", pa.int64())])
GATEWAYS_SCHEMA = pa.schema(
    [
        ("gateway", pa.string()),
        ("site", pa.string()),
        ("status", pa.string()),
        ("last_seen_at", TS_TYPE),
        ("silent_for_s", pa.float64()),
        ("last_batch", pa.int64()),
        ("last_batch_at", TS_TYPE),
        ("missing_batch_count", pa.int64()),
        ("missing_batches", pa.list_(_RANGE)),
        ("buffer_depth", pa.int64()),
        ("oldest_buffered_ts", TS_TYPE),
        ("reported_last_batch", pa.int64()),
        ("dropped", pa.int64()),
        ("last_heartbeat_at", TS_TYPE),
        ("registered_at", TS_TYPE),
    ]
)


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if f.type == TS_TYPE:
            columns[f.name] = pa.array(values, pa.int64()).cast(TS_TYPE)
        else:
            columns[f.name] = pa.array(values, f.type)
    return pa.table(columns, schema=schema)


def sql_tables(store: Store, tenant: str, tracker: Tracker) -> dict[str, pa.Table]:
    """The metadata tables of one tenant for its SQL sandbox: ``{"sensors": ..., "gateways": ...}``."""
    now_us = tracker.clock()
    gw_rows = _gateway_rows(store, tracker, tenant, now_us)
    sensor_rows = _sensor_rows(store, tracker, tenant, gw_rows, now_us)
    flat_gateways = []
    for row in gw_rows.values():
        backlog = row["backlog"] or {}
        flat_gateways.append(
            {
                **row,
                "last_seen_at": row["last_seen_at_us"],
                "silent_for_s": _ago_s(now_us, row["last_seen_at_us"]),
                "last_batch_at": row["last_batch_at_us"],
                "missing_batches": [{"first": lo, "last": hi} for lo, hi in row["missing_batches"]],
                "buffer_depth": backlog.get("buffer_depth"),
                "oldest_buffered_ts": _us(backlog.get("oldest_buffered_ts")),
                "reported_last_batch": backlog.get("reported_last_batch"),
                "dropped": backlog.get("dropped"),
                "last_heartbeat_at": row["last_heartbeat_at_us"],
                "registered_at": row["registered_at_us"],
            }
        )
    flat_sensors = [
        {**r, "last_ts": r["last_ts_us"], "last_received_at": r["last_received_at_us"]} for r in sensor_rows
    ]
    return {
        "sensors": _table(flat_sensors, SENSORS_SCHEMA),
        "gateways": _table(flat_gateways, GATEWAYS_SCHEMA),
    }
