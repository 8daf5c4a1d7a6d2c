"""Vectorised checks of decoded readings: which are stored, which go to quarantine and why."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironwatch.ingest.decode import (
    _EPOCH,
    _MICROSECOND,
    GROUP_MIN_BODIES,
    TS_NO_OFFSET,
    TS_OFFSET,
    TS_OUT_OF_RANGE,
    TS_UNPARSEABLE,
    Decoded,
    Group,
    decode_group,
)
from ironwatch.model import (
    EARLIEST_TS_US,
    ID_PATTERN,
    QUARANTINE_SCHEMA,
    TS_TYPE,
    all_valid_ids,
    empty_table,
    valid_ids,
)

#: Columns of good readings as they travel through the write-ahead log.
WAL_SCHEMA = pa.schema(
    [("ts", pa.int64()), ("sensor", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)
#: The quarantined rows of readings that are all good (tables are immutable: one serves all).
NO_QUARANTINE = empty_table(QUARANTINE_SCHEMA)


@dataclasses.dataclass
class Checked:
    """The outcome of validation: good readings, quarantined rows and the errors to report."""

    good: pa.Table
    quarantine: pa.Table
    errors: list[dict[str, Any]]

    @property
    def accepted(self) -> int:
        return int(self.good.num_rows)

    @property
    def rejected(self) -> int:
        return int(self.quarantine.num_rows)


def _ts_from_strings(ts: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse RFC 3339 strings to epoch microseconds; returns (ts_us, has_offset)."""
    has_offset = pc.match_substring_regex(ts, TS_OFFSET)
    try:
        return pc.cast(ts, TS_TYPE).cast(pa.int64()), has_offset
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Some strings do not parse: find which, one by one (only bad input gets here).
    out: list[int | None] = []
    for text in ts.to_pylist():
        try:
            moment = datetime.fromisoformat(text)
            out.append(None if moment.tzinfo is None else (moment - _EPOCH) // _MICROSECOND)
        except (TypeError, ValueError):
            out.append(None)
    return pa.array(out, type=pa.int64()), has_offset


def _all_good(decoded: Decoded, now_us: int, max_future_s: float) -> pa.Table | None:
    """The readings as a log table when every one of them is fine, else ``None`` (cheap checks only).

    The checks are a few numpy reductions over the columns' buffers, so a good batch with epoch
    millisecond timestamps costs no Arrow compute call.
    """
    if decoded.problem is not None or decoded.count == 0:
        return None
    limit_us = now_us + int(max_future_s * 1_000_000)
    ts = decoded.ts
    if pa.types.is_integer(ts.type):
        ms = ts.to_numpy()
        low, high = int(ms.min()), int(ms.max())
        if low < EARLIEST_TS_US // 1000 or high > limit_us // 1000 or high > 10**15:
            return None
        ts_us = pa.array(ms * 1000)
    else:
        try:
            ts_us = pc.cast(ts, TS_TYPE).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        bounds = pc.min_max(ts_us)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low < EARLIEST_TS_US or high > limit_us:
            return None
    if not np.isfinite(decoded.value.to_numpy()).all():
        return None
    if not (all_valid_ids(decoded.sensor) and all_valid_ids(decoded.metric)):
        return None
    return pa.table([ts_us, decoded.sensor, decoded.metric, decoded.value], schema=WAL_SCHEMA)


def check(
    decoded: Decoded,
    *,
    now_us: int,
    max_future_s: float,
    max_errors: int,
    received_at_us: int,
    transport: str,
) -> Checked:
    """Split readings into good ones and quarantined ones, each with a reason naming the field."""
    fast = _all_good(decoded, now_us, max_future_s)
    if fast is not None:
        return Checked(fast, NO_QUARANTINE, [])
    n = decoded.count
    reason = decoded.problem if decoded.problem is not None else pa.nulls(n, pa.string())
    field = decoded.problem_field if decoded.problem_field is not None else pa.nulls(n, pa.string())

    def flag(cond: pa.Array, name: str, why: str) -> None:
        nonlocal reason, field
        hit = pc.and_kleene(pc.is_null(reason), pc.fill_null(cond, False))
        reason = pc.if_else(hit, pa.scalar(why), reason)
        field = pc.if_else(hit, pa.scalar(name), field)

    ts = decoded.ts
    if pa.types.is_string(ts.type):
        ts_us, has_offset = _ts_from_strings(ts)
        flag(pc.invert(has_offset), "ts", TS_NO_OFFSET)
        flag(pc.is_null(ts_us), "ts", TS_UNPARSEABLE)
    elif pa.types.is_integer(ts.type):
        in_range = pc.less_equal(pc.abs(ts), 10**15)
        flag(pc.invert(in_range), "ts", TS_OUT_OF_RANGE)
        ts_us = pc.multiply(pc.if_else(in_range, ts, 0), 1000)
    else:
        ts_us = ts.cast(pa.int64())
    flag(pc.less(ts_us, EARLIEST_TS_US), "ts", "before 2000-01-01 (epoch seconds sent as milliseconds?)")
    limit_us = now_us + int(max_future_s * 1_000_000)
    flag(pc.greater(ts_us, limit_us), "ts", f"more than {max_future_s:g} s in the future")
    flag(pa.array(~valid_ids(decoded.sensor)), "sensor", f"does not match {ID_PATTERN}")
    flag(pa.array(~valid_ids(decoded.metric)), "metric", f"does not match {ID_PATTERN}")
    flag(pc.is_nan(decoded.value), "value", "NaN is not a reading")
    flag(pc.is_inf(decoded.value), "value", "infinite is not a reading")

    good_mask = pc.is_null(reason)
    table = pa.table([ts_us, decoded.sensor, decoded.metric, decoded.value], schema=WAL_SCHEMA)
    if reason.null_count == n:
        return Checked(table, empty_table(QUARANTINE_SCHEMA), [])
    bad_mask = pc.invert(good_mask)
    bad_idx = pc.indices_nonzero(bad_mask).cast(pa.int64())
    bad_reason, bad_field = pc.take(reason, bad_idx), pc.take(field, bad_idx)
    raw = pa.array(decoded.raw, type=pa.string()) if decoded.raw is not None else pa.nulls(n, pa.string())
    nb = len(bad_idx)

    def const(value: Any, typ: pa.DataType) -> pa.Array:
        return pa.array([value] * nb, type=typ) if nb else pa.array([], type=typ)

    quarantine = pa.table(
        {
            "received_at": pa.array([received_at_us] * nb, type=pa.int64()).cast(TS_TYPE),
            "transport": const(transport, pa.string()),
            "gateway": const(decoded.gateway, pa.string()),
            "site": const(decoded.site, pa.string()),
            "batch": const(decoded.batch, pa.int64()),
            "index": bad_idx,
            "field": bad_field,
            "reason": bad_reason,
            "ts": pc.take(decoded.ts, bad_idx).cast(pa.string()),
            "sensor": pc.take(decoded.sensor, bad_idx),
            "metric": pc.take(decoded.metric, bad_idx),
            "value": pc.take(decoded.value, bad_idx),
            "raw": pc.take(raw, bad_idx),
        },
        schema=QUARANTINE_SCHEMA,
    )
    shown = min(nb, max_errors)
    errors = [
        {"index": i, "field": f, "reason": r}
        for i, f, r in zip(
            bad_idx[:shown].to_pylist(),
            bad_field[:shown].to_pylist(),
            bad_reason[:shown].to_pylist(),
            strict=True,
        )
    ]
    return Checked(table.filter(good_mask), quarantine, errors)


@dataclasses.dataclass
class CheckedGroup:
    """Several batches validated together: the outcome of each, and their good readings as one table."""

    items: list[Checked]
    good: pa.Table

    @property
    def quarantine(self) -> pa.Table:
        bad = [c.quarantine for c in self.items if c.quarantine.num_rows]
        if not bad:
            return NO_QUARANTINE
        return bad[0] if len(bad) == 1 else pa.concat_tables(bad)


def check_many(
    batches: list[Decoded],
    *,
    now_us: int,
    max_future_s: float,
    max_errors: int,
    received_at_us: int,
    transport: str,
) -> CheckedGroup:
    """:func:`check` several batches; when all their readings are good, with one pass over them all.

    Many small batches (MQTT messages of 100 readings) cost a few numpy and Arrow calls in all
    instead of a few each; the good readings come out as one table, in the order of ``batches``.
    """
    if not batches:
        return CheckedGroup([], empty_table(WAL_SCHEMA))
    if len(batches) > 1 and all(d.problem is None and d.count for d in batches):
        ts_types = {d.ts.type for d in batches}
        if len(ts_types) == 1:
            first = batches[0]
            joined = dataclasses.replace(
                first,
                ts=pa.concat_arrays([d.ts for d in batches]),
                sensor=pa.concat_arrays([d.sensor for d in batches]),
                metric=pa.concat_arrays([d.metric for d in batches]),
                value=pa.concat_arrays([d.value for d in batches]),
            )
            good = _all_good(joined, now_us, max_future_s)
            if good is not None:
                items, offset = [], 0
                for d in batches:
                    items.append(Checked(good.slice(offset, d.count), NO_QUARANTINE, []))
                    offset += d.count
                return CheckedGroup(items, good)
    items = [
        check(
            d,
            now_us=now_us,
            max_future_s=max_future_s,
            max_errors=max_errors,
            received_at_us=received_at_us,
            transport=transport,
        )
        for d in batches
    ]
    goods = [c.good for c in items]
    good = goods[0] if len(goods) == 1 else pa.concat_tables(goods).combine_chunks()
    return CheckedGroup(items, good)


def check_group(group: Group, *, now_us: int, max_future_s: float) -> pa.Table | None:
    """A decoded group's readings as one log table when every one of them is fine, else ``None``
    (then each envelope is checked on its own, to find which readings are wrong and why)."""
    joined = Decoded("", "", 0, None, group.ts, group.sensor, group.metric, group.value)
    return _all_good(joined, now_us, max_future_s)


def good_group(
    bodies: list[bytes], *, now_us: int, max_future_s: float, max_readings: int
) -> tuple[Group, pa.Table] | None:
    """A large group of envelopes decoded and checked in one pass: the group and its readings as one
    log table, when there are at least :data:`GROUP_MIN_BODIES` of them, all plainly well formed,
    with every reading good; else ``None`` (the caller decodes and checks them one by one)."""
    if len(bodies) < GROUP_MIN_BODIES:
        return None
    group = decode_group(bodies, max_readings=max_readings)
    if group is None:
        return None
    good = check_group(group, now_us=now_us, max_future_s=max_future_s)
    return None if good is None else (group, good)


def whole_message(
    payload: bytes, reason: str, *, received_at_us: int, transport: str, topic: str | None = None
) -> pa.Table:
    """A quarantine row for a message that could not be decoded at all (MQTT has no one to answer)."""
    try:
        raw = payload.decode("utf-8")
    except UnicodeDecodeError:
        raw = payload.decode("latin-1")
    gateway = site = None
    if topic:
        parts = topic.split("/")
        if len(parts) == 5:
            site, gateway = parts[2], parts[3]
    return pa.table(
        {
            "received_at": pa.array([received_at_us], pa.int64()).cast(TS_TYPE),
            "transport": [transport],
            "gateway": pa.array([gateway], pa.string()),
            "site": pa.array([site], pa.string()),
            "batch": pa.nulls(1, pa.int64()),
            "index": pa.nulls(1, pa.int64()),
            "field": pa.array([topic and "topic:" + topic], pa.string()),
            "reason": [reason],
            "ts": pa.nulls(1, pa.string()),
            "sensor": pa.nulls(1, pa.string()),
            "metric": pa.nulls(1, pa.string()),
            "value": pa.nulls(1, pa.float64()),
            "raw": [raw],
        },
        schema=QUARANTINE_SCHEMA,
    )
