"""Decoding of a batch envelope (row or columnar form) into Arrow columns.

Three paths, tried in turn:

- :func:`decode_group`: the envelopes of a large group (MQTT messages that arrived together, or
  many HTTP requests read in one turn of the event loop) in one call of Arrow's JSON reader, when
  every one of them is plainly well formed. No Python object per reading or per envelope, and the
  GIL is released while Arrow parses.
- :func:`decode_many` / :func:`decode`: each envelope through typed msgspec decoders, its lists then
  converted to Arrow columns once for the group (numbers through numpy).
- a generic path that walks the readings one by one, only for bad input (wrong types, mixed
  timestamp forms, NaN literals), to name exactly which reading and field is wrong.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from ironwatch.errors import BodyTooLarge, InvalidInput, MalformedBody
from ironwatch.model import all_valid_ids, check_id

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A UTC offset at the end of an RFC 3339 timestamp.
TS_OFFSET = r"([Zz]|[+-]\d\d:?\d\d)$"
# Reasons for bad timestamps, the same whichever path finds them, so quarantine can be grouped by reason.
TS_NO_OFFSET = "not an RFC 3339 timestamp with a UTC offset"
TS_UNPARSEABLE = "not an RFC 3339 timestamp"
TS_OUT_OF_RANGE = "out of range for epoch milliseconds"
_MICROSECOND = timedelta(microseconds=1)
_FIELDS = ("ts", "sensor", "metric", "value")
_STR_TS = pa.struct(
    [("ts", pa.string()), ("sensor", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)
_INT_TS = pa.struct(
    [("ts", pa.int64()), ("sensor", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)


@dataclasses.dataclass
class Decoded:
    """A decoded envelope. ``problem`` holds, per reading, why it cannot be stored (null if fine).

    ``ts`` is either a string column (RFC 3339, parsed during validation), an int64 column (epoch
    milliseconds) or a timestamp column (already parsed by the slow path).
    """

    gateway: str
    site: str
    batch: int
    sent_at: Any
    ts: pa.Array
    sensor: pa.Array
    metric: pa.Array
    value: pa.Array
    problem: pa.Array | None = None
    problem_field: pa.Array | None = None
    raw: list[str | None] | None = None

    @property
    def count(self) -> int:
        return len(self.value)


def gunzip(body: bytes, limit_bytes: int) -> bytes:
    """Decompress a gzip body, refusing to inflate past ``limit_bytes`` (no zip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit_bytes + 1)
        if len(out) > limit_bytes or inflater.unconsumed_tail:
            raise BodyTooLarge(limit_bytes)
        if not inflater.eof:
            raise MalformedBody("body", "gzip stream is truncated")
    except zlib.error as exc:
        raise MalformedBody("body", f"not valid gzip: {exc}") from exc
    return out


def parse_json(body: bytes) -> Any:
    """Parse JSON; NaN and Infinity literals (as Python's json writes them) are accepted."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise MalformedBody("body", f"not valid JSON: {fast_error}") from None


# Typed decoders for well-formed input, one per timestamp form: msgspec checks every type while it
# parses, so a body that decodes here needs no further type checks. Epoch milliseconds come first
# (what gateways send); text timestamps are tried second; anything else goes the generic way.
class _ReadingMs(msgspec.Struct, gc=False):
    ts: int
    sensor: str
    metric: str
    value: float


class _ReadingText(msgspec.Struct, gc=False):
    ts: str
    sensor: str
    metric: str
    value: float


class _ColumnsMs(msgspec.Struct, gc=False):
    ts: list[int]
    sensor: list[str]
    metric: list[str]
    value: list[float]


class _ColumnsText(msgspec.Struct, gc=False):
    ts: list[str]
    sensor: list[str]
    metric: list[str]
    value: list[float]


class _EnvelopeMs(msgspec.Struct, gc=False):
    gateway: str
    batch: int
    site: str
    sent_at: str | int | None = None
    readings: list[_ReadingMs] | None = None
    columns: _ColumnsMs | None = None


class _EnvelopeText(msgspec.Struct, gc=False):
    gateway: str
    batch: int
    site: str
    sent_at: str | int | None = None
    readings: list[_ReadingText] | None = None
    columns: _ColumnsText | None = None


_TYPED = (msgspec.json.Decoder(_EnvelopeMs), msgspec.json.Decoder(_EnvelopeText))


def _typed(body: bytes) -> _EnvelopeMs | _EnvelopeText | None:
    for decoder in _TYPED:
        try:
            return decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            # msgspec raises UnicodeDecodeError for invalid UTF-8: the generic path names it as malformed
            continue
    return None


@dataclasses.dataclass
class _Parsed:
    """A well-typed envelope whose readings are still Python lists (before they become columns)."""

    head: dict[str, Any]
    is_ms: bool
    ts: list[Any]
    sensor: list[str]
    metric: list[str]
    value: list[float]


def _parse(body: bytes, max_readings: int) -> _Parsed | Decoded:
    """Parse an envelope: well-typed input as lists, anything else decoded the generic way."""
    env = _typed(body)
    if env is None:
        return _decode_generic(body, max_readings)
    check_id("gateway", env.gateway)
    check_id("site", env.site)
    if (env.readings is None) == (env.columns is None) or not 0 <= env.batch < 2**63:
        return _decode_generic(body, max_readings)
    head: dict[str, Any] = dict(gateway=env.gateway, site=env.site, batch=env.batch, sent_at=env.sent_at)
    if env.readings is not None:
        rows = env.readings
        if len(rows) > max_readings:
            raise InvalidInput("readings", f"{len(rows)} readings in one batch; the limit is {max_readings}")
        ts_list: list[Any] = [r.ts for r in rows]
        sensor, metric, value = [r.sensor for r in rows], [r.metric for r in rows], [r.value for r in rows]
    else:
        assert env.columns is not None
        cols = env.columns
        ts_list, sensor, metric, value = cols.ts, cols.sensor, cols.metric, cols.value
        lengths = {"ts": len(ts_list), "sensor": len(sensor), "metric": len(metric), "value": len(value)}
        if len(set(lengths.values())) != 1:
            raise InvalidInput("columns", f"columns differ in length: {lengths}")
        if len(ts_list) > max_readings:
            raise InvalidInput(
                "columns", f"{len(ts_list)} readings in one batch; the limit is {max_readings}"
            )
    return _Parsed(head, isinstance(env, _EnvelopeMs), ts_list, sensor, metric, value)


def _chain(lists: list[list[Any]]) -> list[Any]:
    return lists[0] if len(lists) == 1 else list(itertools.chain.from_iterable(lists))


def _columns_of(parsed: list[_Parsed]) -> list[Decoded] | None:
    """Columns for envelopes of one timestamp form, built once for all and sliced per envelope.

    ``None`` when a timestamp does not fit int64 (the caller decodes each envelope on its own).
    """
    if parsed[0].is_ms:
        try:
            ts = pa.array(np.array(_chain([p.ts for p in parsed]), dtype=np.int64))
        except OverflowError:
            return None
    else:
        ts = pa.array(_chain([p.ts for p in parsed]), type=pa.string())
    sensor = pa.array(_chain([p.sensor for p in parsed]), type=pa.string())
    metric = pa.array(_chain([p.metric for p in parsed]), type=pa.string())
    value = pa.array(np.array(_chain([p.value for p in parsed]), dtype=np.float64))
    out, offset = [], 0
    for p in parsed:
        n = len(p.value)
        out.append(
            Decoded(
                **p.head,
                ts=ts.slice(offset, n),
                sensor=sensor.slice(offset, n),
                metric=metric.slice(offset, n),
                value=value.slice(offset, n),
            )
        )
        offset += n
    return out


def decode(body: bytes, *, max_readings: int) -> Decoded:
    """Decode an envelope; raise :class:`InvalidInput` for anything that makes the whole batch unusable.

    Well-typed input is decoded straight into typed records and then Arrow columns (numbers through
    numpy, which converts a list of Python ints several times faster than Arrow does); anything else
    (a wrong type somewhere, NaN literals, a missing field, timestamps of both forms) goes the
    generic way, which names exactly what is wrong.
    """
    parsed = _parse(body, max_readings)
    if isinstance(parsed, Decoded):
        return parsed
    columns = _columns_of([parsed])
    if columns is None:
        return _decode_generic(body, max_readings)  # beyond int64: the slow path names the reading
    return columns[0]


def decode_many(bodies: list[bytes], *, max_readings: int) -> list[Decoded | Exception]:
    """:func:`decode` several envelopes; per envelope, its columns or why it cannot be used.

    The readings of all well-typed envelopes become Arrow columns in one conversion per column (and
    timestamp form), so many small envelopes cost about what one large one does.
    """
    out: list[Decoded | Exception | None] = [None] * len(bodies)
    by_form: dict[bool, list[tuple[int, _Parsed]]] = {}
    for i, body in enumerate(bodies):
        try:
            parsed = _parse(body, max_readings)
        except Exception as exc:  # one envelope's problem (or a bug it hits) is its own answer
            out[i] = exc
            continue
        if isinstance(parsed, Decoded):
            out[i] = parsed
        else:
            by_form.setdefault(parsed.is_ms, []).append((i, parsed))
    for group in by_form.values():
        columns = _columns_of([p for _, p in group])
        for n, (i, _) in enumerate(group):
            if columns is not None:
                out[i] = columns[n]
            else:
                try:
                    out[i] = decode(bodies[i], max_readings=max_readings)
                except Exception as exc:
                    out[i] = exc
    answers: list[Decoded | Exception] = []
    for answer in out:
        assert answer is not None  # every envelope was answered above
        answers.append(answer)
    return answers


# Several envelopes at once, in Arrow's JSON reader -----------------------------------------------
_GROUP_READING = pa.struct(
    [("ts", pa.int64()), ("sensor", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)
_GROUP_SCHEMA = pa.schema(
    [
        ("gateway", pa.string()),
        ("site", pa.string()),
        ("batch", pa.int64()),
        ("readings", pa.list_(_GROUP_READING)),
        ("columns", pa.struct([(f.name, pa.list_(f.type)) for f in _GROUP_READING])),
    ]
)
# Fields the typed decoders do not use either (``sent_at``, anything unknown) are skipped.
_GROUP_PARSE = pa_json.ParseOptions(explicit_schema=_GROUP_SCHEMA, unexpected_field_behavior="ignore")
#: Fewest envelopes worth :func:`decode_group`: a call of Arrow's JSON reader costs 150-400 us before
#: it reads anything, which only a large group pays back (an HTTP request of 1000 readings decodes in
#: ~270 us with msgspec, ~750 us with Arrow; 512 MQTT messages of 100 readings in 19 ms against 15 ms).
GROUP_MIN_BODIES = 32


@dataclasses.dataclass(frozen=True)
class Group:
    """Well-formed envelopes decoded together: each one's head and number of readings, and all
    their readings as one set of columns (in the envelopes' order), timestamps in epoch milliseconds."""

    gateway: list[str]
    site: list[str]
    batch: list[int]
    counts: np.ndarray
    ts: pa.Array
    sensor: pa.Array
    metric: pa.Array
    value: pa.Array


def _has_nulls(array: pa.Array) -> bool:
    """Whether an array, or any array nested in it, holds a null (a missing field, or JSON null)."""
    if array.null_count:
        return True
    if isinstance(array, pa.StructArray):
        return any(_has_nulls(array.field(i)) for i in range(array.type.num_fields))
    if isinstance(array, pa.ListArray):
        return _has_nulls(array.flatten())
    return False


def decode_group(bodies: list[bytes], *, max_readings: int) -> Group | None:
    """Decode envelopes that are all plainly well formed in one call of Arrow's JSON reader.

    The common case of many small MQTT messages: no Python object per reading or per envelope, and
    Python's global lock is released while Arrow parses. ``None`` unless every envelope is a JSON
    object on one line, of one form (rows or columns), with epoch-millisecond timestamps, every field
    present with its type, valid gateway and site ids, a batch number in range and 1 to
    ``max_readings`` readings. Then the caller decodes them one by one (:func:`decode_many`), which
    names what is wrong; Arrow's reader is at least as strict as that, so nothing it takes would be
    refused there.
    """
    if not bodies:
        return None
    for body in bodies:
        # One object per line: a body over several lines, or with two objects, would shift the rows.
        if body[:1] != b"{" or body[-1:] != b"}" or b"\n" in body or b"\r" in body:
            return None
    joined = b"\n".join(bodies)
    try:
        table = pa_json.read_json(
            pa.BufferReader(joined),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=len(joined) + 1),
            parse_options=_GROUP_PARSE,
        ).combine_chunks()
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    if table.num_rows != len(bodies):
        return None
    gateway, site, batch = (table.column(name).chunk(0) for name in ("gateway", "site", "batch"))
    if gateway.null_count or site.null_count or batch.null_count:
        return None
    if not (all_valid_ids(gateway) and all_valid_ids(site)) or pc.min(batch).as_py() < 0:
        return None
    rows, columns = table.column("readings").chunk(0), table.column("columns").chunk(0)
    if rows.null_count == 0 and columns.null_count == len(bodies):
        if _has_nulls(rows):
            return None
        counts = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
        readings = rows.flatten()
        ts, sensor, metric, value = (readings.field(name) for name in _FIELDS)
    elif columns.null_count == 0 and rows.null_count == len(bodies):
        if _has_nulls(columns):
            return None
        lists = [columns.field(name) for name in _FIELDS]
        counts = pc.list_value_length(lists[0]).to_numpy(zero_copy_only=False)
        if any(
            not np.array_equal(pc.list_value_length(a).to_numpy(zero_copy_only=False), counts)
            for a in lists[1:]
        ):
            return None
        ts, sensor, metric, value = (a.flatten() for a in lists)
    else:  # forms mixed, or an envelope with both or neither
        return None
    if counts.min() < 1 or counts.max() > max_readings:
        return None
    return Group(gateway.to_pylist(), site.to_pylist(), batch.to_pylist(), counts, ts, sensor, metric, value)


def _decode_generic(body: bytes, max_readings: int) -> Decoded:
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidInput("body", f"expected a JSON object, got {_kind(doc)}")
    gateway = check_id("gateway", doc.get("gateway"))
    site = check_id("site", doc.get("site"))
    batch = doc.get("batch")
    if batch is None:
        raise InvalidInput("batch", "missing")
    if not isinstance(batch, int) or isinstance(batch, bool):
        raise InvalidInput("batch", f"expected an integer, got {_kind(batch)}")
    if not 0 <= batch < 2**63:
        raise InvalidInput("batch", "must be between 0 and 2^63-1")
    sent_at = doc.get("sent_at")
    rows, columns = doc.get("readings"), doc.get("columns")
    if (rows is None) == (columns is None):
        raise InvalidInput("readings", "give exactly one of 'readings' (rows) or 'columns'")
    head = dict(gateway=gateway, site=site, batch=batch, sent_at=sent_at)
    if rows is not None:
        if not isinstance(rows, list):
            raise InvalidInput("readings", f"expected a list, got {_kind(rows)}")
        if len(rows) > max_readings:
            raise InvalidInput("readings", f"{len(rows)} readings in one batch; the limit is {max_readings}")
        has_bool = b"true" in body or b"false" in body
        return _rows_slow(rows, head) if has_bool else _rows_fast(rows, head)
    if not isinstance(columns, dict):
        raise InvalidInput("columns", f"expected an object of lists, got {_kind(columns)}")
    lengths = {}
    for name in _FIELDS:
        col = columns.get(name)
        if not isinstance(col, list):
            raise InvalidInput(
                f"columns.{name}", "missing" if col is None else f"expected a list, got {_kind(col)}"
            )
        lengths[name] = len(col)
    if len(set(lengths.values())) != 1:
        raise InvalidInput("columns", f"columns differ in length: {lengths}")
    if lengths["ts"] > max_readings:
        raise InvalidInput("columns", f"{lengths['ts']} readings in one batch; the limit is {max_readings}")
    return _columns(columns, head, body)


def _rows_fast(rows: list[Any], head: dict[str, Any]) -> Decoded:
    for struct in (_STR_TS, _INT_TS):
        try:
            arr = pa.array(rows, type=struct)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            continue
        if arr.null_count or any(arr.field(i).null_count for i in range(4)):
            break  # a reading that is null or misses a field: let the slow path name it
        return Decoded(**head, ts=arr.field(0), sensor=arr.field(1), metric=arr.field(2), value=arr.field(3))
    return _rows_slow(rows, head)


def _columns(columns: dict[str, Any], head: dict[str, Any], body: bytes) -> Decoded:
    has_bool = b"true" in body or b"false" in body
    if not has_bool:
        try:
            ts_list = columns["ts"]
            ts_type = pa.int64() if ts_list and isinstance(ts_list[0], int) else pa.string()
            arrays = [
                pa.array(ts_list, type=ts_type),
                pa.array(columns["sensor"], type=pa.string()),
                pa.array(columns["metric"], type=pa.string()),
                pa.array(columns["value"], type=pa.float64()),
            ]
            if not any(a.null_count for a in arrays):
                return Decoded(**head, ts=arrays[0], sensor=arrays[1], metric=arrays[2], value=arrays[3])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            pass
    rows = [
        dict(zip(_FIELDS, values, strict=True)) for values in zip(*(columns[f] for f in _FIELDS), strict=True)
    ]
    return _rows_slow(rows, head)


def _rows_slow(rows: list[Any], head: dict[str, Any]) -> Decoded:
    """Walk readings one by one; only reached by input that the fast path refused."""
    n = len(rows)
    ts: list[int | None] = [None] * n
    sensor: list[str | None] = [None] * n
    metric: list[str | None] = [None] * n
    value: list[float | None] = [None] * n
    problem: list[str | None] = [None] * n
    field: list[str | None] = [None] * n
    raw: list[str | None] = [None] * n
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problem[i], field[i], raw[i] = f"expected an object, got {_kind(row)}", "", _dump(row)
            continue
        try:
            ts[i] = _ts_us(row.get("ts"))
            for name, out in (("sensor", sensor), ("metric", metric)):
                item = row.get(name)
                if item is None:
                    raise _Bad(name, "missing")
                if not isinstance(item, str):
                    raise _Bad(name, f"expected a string, got {_kind(item)}")
                out[i] = item
            item = row.get("value")
            if item is None:
                raise _Bad("value", "missing")
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise _Bad("value", f"expected a number, got {_kind(item)}")
            value[i] = float(item)
        except _Bad as bad:
            problem[i], field[i], raw[i] = bad.reason, bad.field, _dump(row)
        except OverflowError:
            problem[i], field[i], raw[i] = "number out of range", "value", _dump(row)
    return Decoded(
        **head,
        ts=pa.array(ts, type=pa.timestamp("us", tz="UTC")),
        sensor=pa.array(sensor, type=pa.string()),
        metric=pa.array(metric, type=pa.string()),
        value=pa.array(value, type=pa.float64()),
        problem=pa.array(problem, type=pa.string()),
        problem_field=pa.array(field, type=pa.string()),
        raw=raw,
    )


class _Bad(Exception):
    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason


def _ts_us(item: Any) -> int:
    if item is None:
        raise _Bad("ts", "missing")
    if isinstance(item, bool):
        raise _Bad("ts", "expected RFC 3339 text or epoch milliseconds, got a boolean")
    if isinstance(item, int):
        if abs(item) > 10**15:
            raise _Bad("ts", TS_OUT_OF_RANGE)
        return item * 1000
    if isinstance(item, str):
        if re.search(TS_OFFSET, item) is None:
            raise _Bad("ts", TS_NO_OFFSET)
        try:
            moment = datetime.fromisoformat(item)
        except ValueError:
            raise _Bad("ts", TS_UNPARSEABLE) from None
        if moment.tzinfo is None:
            raise _Bad("ts", TS_NO_OFFSET)
        return (moment - _EPOCH) // _MICROSECOND
    if isinstance(item, float) and math.isfinite(item) and item.is_integer():
        if abs(item) > 10**15:  # 1e20, or an integer too large for JSON parsers to keep exact
            raise _Bad("ts", TS_OUT_OF_RANGE)
        return int(item) * 1000
    raise _Bad("ts", f"expected RFC 3339 text or epoch milliseconds, got {_kind(item)}")


def _kind(item: Any) -> str:
    if item is None:
        return "null"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(item), type(item).__name__)


def _dump(item: Any) -> str:
    try:
        return orjson.dumps(item).decode()
    except TypeError:
        return json.dumps(item, default=str)
