"""Envelope decoding: the fast columnar path and the slow, precise path agree."""

from __future__ import annotations

import gzip
import math

import orjson
import pyarrow as pa
import pytest

from ironwatch.errors import BodyTooLarge, InvalidInput, MalformedBody
from ironwatch.ingest.decode import Decoded, decode, decode_many, gunzip
from ironwatch.ingest.validate import check, check_many

NOW_US = 1_795_540_000_000_000  # 2026-11-24T14:26:40Z


def envelope(readings: list[object], **extra: object) -> bytes:
    return orjson.dumps({"gateway": "gw-1", "batch": 1, "site": "hall-a", "readings": readings, **extra})


def run(body: bytes) -> tuple[pa.Table, pa.Table, list[dict[str, object]]]:
    checked = check(
        decode(body, max_readings=10_000),
        now_us=NOW_US,
        max_future_s=600,
        max_errors=100,
        received_at_us=NOW_US,
        transport="test",
    )
    return checked.good, checked.quarantine, checked.errors


def test_string_and_integer_timestamps_mean_the_same_instant() -> None:
    rows = [
        {"ts": "2026-11-24T14:00:00.250Z", "sensor": "s-1", "metric": "rpm", "value": 1},
        {"ts": "2026-11-24T15:00:00.250+01:00", "sensor": "s-1", "metric": "rpm", "value": 2},
    ]
    good, _, errors = run(envelope(rows))
    assert errors == []
    assert good["ts"].to_pylist() == [1_795_528_800_250_000] * 2
    as_ms = [{**rows[0], "ts": 1_795_528_800_250}]
    assert run(envelope(as_ms))[0]["ts"].to_pylist() == [1_795_528_800_250_000]


def test_mixed_timestamp_forms_take_the_slow_path_and_still_agree() -> None:
    rows = [
        {"ts": "2026-11-24T14:00:00Z", "sensor": "s-1", "metric": "rpm", "value": 1.5},
        {"ts": 1_795_528_800_000, "sensor": "s-2", "metric": "rpm", "value": 2},
    ]
    good, quarantine, errors = run(envelope(rows))
    assert errors == [] and quarantine.num_rows == 0
    assert good["ts"].to_pylist() == [1_795_528_800_000_000] * 2
    assert good["value"].to_pylist() == [1.5, 2.0]


def test_columnar_form_equals_row_form() -> None:
    rows = [
        {"ts": 1_795_528_800_000 + i, "sensor": f"s-{i % 7}", "metric": "temperature_c", "value": i / 3}
        for i in range(500)
    ]
    columns = {name: [r[name] for r in rows] for name in ("ts", "sensor", "metric", "value")}
    by_rows = run(envelope(rows))[0]
    by_columns = run(orjson.dumps({"gateway": "gw-1", "batch": 1, "site": "hall-a", "columns": columns}))[0]
    assert by_rows.equals(by_columns)


def test_bad_readings_are_named_and_good_ones_kept() -> None:
    body = (
        b'{"gateway":"gw-1","batch":3,"site":"hall-a","readings":['
        b'{"ts":"2026-11-24T14:00:00Z","sensor":"s-1","metric":"rpm","value":1},'
        b'{"ts":"2026-11-24T14:00:00Z","sensor":"s-1","metric":"rpm","value":NaN},'
        b'{"ts":"2026-11-24T14:00:00Z","sensor":"s-1","metric":"rpm","value":true},'
        b'{"ts":"2026-11-24T14:00:00","sensor":"s-1","metric":"rpm","value":1},'
        b'{"ts":"2027-01-01T00:00:00Z","sensor":"s-1","metric":"rpm","value":1},'
        b'{"ts":"2026-11-24T14:00:00Z","sensor":"s/1","metric":"rpm","value":1},'
        b"42]}"
    )
    good, quarantine, errors = run(body)
    assert good.num_rows == 1
    assert [(e["index"], e["field"]) for e in errors] == [
        (1, "value"),
        (2, "value"),
        (3, "ts"),
        (4, "ts"),
        (5, "sensor"),
        (6, ""),
    ]
    assert quarantine.num_rows == 6
    assert math.isnan(quarantine["value"][0].as_py())
    assert quarantine["raw"][5].as_py() == "42"


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (b"{", MalformedBody, "body"),
        (b"[]", InvalidInput, "body"),
        (orjson.dumps({"batch": 1, "site": "a", "readings": []}), InvalidInput, "gateway"),
        (orjson.dumps({"gateway": "../x", "batch": 1, "site": "a", "readings": []}), InvalidInput, "gateway"),
        (orjson.dumps({"gateway": "g", "batch": "1", "site": "a", "readings": []}), InvalidInput, "batch"),
        (orjson.dumps({"gateway": "g", "batch": 1, "site": "a"}), InvalidInput, "readings"),
        (
            orjson.dumps({"gateway": "g", "batch": 1, "site": "a", "columns": {"ts": [1], "sensor": []}}),
            InvalidInput,
            "columns.metric",
        ),
    ],
)
def test_unusable_envelopes_are_refused_whole(body: bytes, error: type[Exception], field: str) -> None:
    with pytest.raises(error) as caught:
        decode(body, max_readings=10)
    assert caught.value.field == field  # type: ignore[attr-defined]


def test_gzip_bombs_stop_at_the_limit() -> None:
    bomb = gzip.compress(b" " * 10_000_000)
    with pytest.raises(BodyTooLarge):
        gunzip(bomb, 1_000_000)
    assert gunzip(gzip.compress(b"{}"), 100) == b"{}"
    with pytest.raises(MalformedBody):
        gunzip(b"\x1f\x8bnot gzip at all", 100)
    with pytest.raises(MalformedBody):
        gunzip(gzip.compress(b"x" * 1000)[:-20], 10_000)


def test_fast_and_full_checks_agree_on_good_input() -> None:
    rows = [
        {
            "ts": f"2026-11-24T14:{i // 60:02d}:{i % 60:02d}Z",
            "sensor": f"s-{i % 9}",
            "metric": "rpm",
            "value": i,
        }
        for i in range(300)
    ]
    decoded = decode(envelope(rows), max_readings=1000)
    fast = check(
        decoded, now_us=NOW_US, max_future_s=600, max_errors=100, received_at_us=NOW_US, transport="t"
    )
    decoded.problem = pa.nulls(300, pa.string())  # forces the full, per-check path
    full = check(
        decoded, now_us=NOW_US, max_future_s=600, max_errors=100, received_at_us=NOW_US, transport="t"
    )
    assert fast.good.equals(full.good)
    assert fast.errors == full.errors == []


def _many(bodies: list[bytes], picks: list[int]) -> tuple[pa.Table, list[int]]:
    decoded = decode_many(bodies, max_readings=10_000)
    chosen = [d for i, d in enumerate(decoded) if i in picks and isinstance(d, Decoded)]
    assert len(chosen) == len(picks)
    group = check_many(
        chosen,
        now_us=NOW_US,
        max_future_s=600,
        max_errors=100,
        received_at_us=NOW_US,
        transport="test",
    )
    return group.good, [c.good.num_rows for c in group.items]


@pytest.mark.parametrize("picks", [[0, 1, 2, 3], [1, 2], [0, 2, 3], [3], [0, 3]])
def test_envelopes_decoded_together_are_checked_as_one_whichever_are_kept(picks: list[int]) -> None:
    """Any subset of a decoded group (the rest were duplicates or refused) checks like each alone."""
    bodies = [
        envelope(
            [
                {"ts": 1_795_539_000_000 + i, "sensor": f"s-{n}", "metric": "rpm", "value": n + i / 10}
                for i in range(n + 2)
            ],
            batch=n,
        )
        for n in range(4)
    ]
    good, counts = _many(bodies, picks)
    alone = [run(bodies[i])[0] for i in picks]
    assert counts == [t.num_rows for t in alone]
    assert good.to_pylist() == pa.concat_tables(alone).to_pylist()
