"""Envelopes decoded together by Arrow's JSON reader (``decode_group``), and the pipeline's use of it.

The group path is an optimisation: for well-formed envelopes it must give exactly what decoding and
checking each one alone gives, and for anything else it must step aside (``None``, or readings that
``check_group`` does not pass), so the envelope-by-envelope path names what is wrong. The pipeline
tests run in process and through an ingest worker, over a real data directory.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
import pyarrow as pa
import pytest
from test_groups import CHECK, NOW_US, admit, envelope, log_records, outcomes, reached_the_worker, sample
from test_groups import pipeline as pipeline  # the fixture: a pipeline in process, and with one worker

from ironwatch.errors import Forbidden
from ironwatch.ingest import Pipeline
from ironwatch.ingest import record as records
from ironwatch.ingest.decode import GROUP_MIN_BODIES, decode_group, decode_many
from ironwatch.ingest.validate import WAL_SCHEMA, check_group, check_many, good_group
from ironwatch.model import Principal, Role, utc_now_us

NOW_MS = NOW_US // 1000
MAX = 1000


def good(
    batch: int, *, gateway: str = "gw-1", site: str = "hall-a", n: int = 10, form: str = "columns"
) -> bytes:
    return orjson.dumps(envelope(gateway, batch, site=site, n=n, form=form, now_ms=NOW_MS))


def group_table(bodies: list[bytes], now_us: int = NOW_US) -> pa.Table | None:
    """What the group path makes of ``bodies``: one log table, or ``None`` when it steps aside."""
    group = decode_group(bodies, max_readings=MAX)
    if group is None:
        return None
    return check_group(group, now_us=now_us, max_future_s=CHECK["max_future_s"])


@pytest.mark.parametrize("form", ["columns", "readings"])
def test_a_group_decodes_to_what_each_envelope_alone_decodes_to(form: str) -> None:
    bodies = [
        good(1, form=form),
        good(1, gateway="gw-2", site="hall-b", n=25, form=form),
        good(2, n=1, form=form),
        # Integer values, unknown fields (at the top and in readings) and sent_at as a number are
        # fine for both paths.
        orjson.dumps(
            {
                **envelope("gw-1", 3, n=3, form=form, now_ms=NOW_MS),
                "sent_at": 1795540000,
                "firmware": {"version": "1.2"},
            }
        ).replace(b'"value":3000.0', b'"value":3000'),
    ]
    group = decode_group(bodies, max_readings=MAX)
    assert group is not None
    alone = decode_many(bodies, max_readings=MAX)
    assert group.gateway == [d.gateway for d in alone]  # type: ignore[union-attr]
    assert group.site == [d.site for d in alone]  # type: ignore[union-attr]
    assert group.batch == [d.batch for d in alone]  # type: ignore[union-attr]
    assert group.counts.tolist() == [10, 25, 1, 3]
    table = check_group(group, now_us=CHECK["now_us"], max_future_s=CHECK["max_future_s"])
    assert table is not None and table.schema == WAL_SCHEMA
    checked = check_many([d for d in alone if not isinstance(d, Exception)], **CHECK)
    assert table.equals(checked.good)


def test_a_lone_envelope_is_a_group_of_one() -> None:
    (body,) = bodies = [good(7, n=1000)]
    table = group_table(bodies)
    (alone,) = decode_many([body], max_readings=MAX)
    assert table is not None and not isinstance(alone, Exception)
    assert table.equals(check_many([alone], **CHECK).good)


def reading(**change: Any) -> bytes:
    """A row-form envelope of two readings whose second reading has ``change`` (None deletes a field)."""
    doc = envelope("gw-1", 5, n=2, form="readings", now_ms=NOW_MS)
    second = {**doc["readings"][1], **change}
    doc["readings"][1] = {k: v for k, v in second.items() if v is not ...}
    return json.dumps(doc).encode()


def head(**change: Any) -> bytes:
    """A columns-form envelope with its head fields changed (``...`` deletes a field)."""
    doc = {**envelope("gw-1", 5, n=2, now_ms=NOW_MS), **change}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def columns(**change: Any) -> bytes:
    doc = envelope("gw-1", 5, n=2, now_ms=NOW_MS)
    doc["columns"] = {k: v for k, v in {**doc["columns"], **change}.items() if v is not ...}
    return json.dumps(doc).encode()


STEP_ASIDE = {
    "text timestamp": good(5, form="text"),
    "ts as a string of digits": reading(ts=str(NOW_MS)),
    "ts as a float": reading(ts=NOW_MS + 0.5),
    "ts as an integral float": reading(ts=float(NOW_MS)),
    "ts beyond int64": reading(ts=2**70),
    "ts as a boolean": reading(ts=True),
    "ts missing": reading(ts=...),
    "ts null": reading(ts=None),
    "ts in the far future": reading(ts=NOW_MS + 86_400_000),
    "ts before 2000": reading(ts=1000),
    "value as a string": reading(value="1.5"),
    "value as a boolean": reading(value=True),
    "value null": reading(value=None),
    "value missing": reading(value=...),
    "value NaN": reading(value=float("nan")),
    "value infinite": reading(value=float("inf")),
    "value beyond a double": reading(value=0).replace(b'"value": 0', b'"value": 1e400'),
    "sensor as a number": reading(sensor=5),
    "sensor as a list": reading(sensor=["s"]),
    "sensor not an id": reading(sensor="no such sensor"),
    "sensor empty": reading(sensor=""),
    "metric null": reading(metric=None),
    "a reading that is null": reading().replace(b"}]", b"}, null]"),
    "a reading that is a list": reading().replace(b"}]", b"}, [1, 2]]"),
    "gateway missing": head(gateway=...),
    "gateway null": head(gateway=None),
    "gateway a number": head(gateway=3),
    "gateway not an id": head(gateway="gw 1"),
    "site not an id": head(site="../etc"),
    "batch negative": head(batch=-1),
    "batch a float": head(batch=1.0),
    "batch a string": head(batch="1"),
    "batch beyond int64": head(batch=2**64),
    "batch missing": head(batch=...),
    "both readings and columns": head(readings=[]),
    "neither readings nor columns": head(columns=...),
    "readings an object": head(columns=..., readings={"ts": 1}),
    "columns of different lengths": columns(value=[1.0]),
    "a column missing": columns(metric=...),
    "a null in a column": columns(sensor=["s-1", None]),
    "a column null": columns(value=None),
    "no readings": columns(ts=[], sensor=[], metric=[], value=[]),
    "too many readings": good(5, n=MAX + 1),
    "pretty-printed over lines": json.dumps(envelope("gw-1", 5, n=2, now_ms=NOW_MS), indent=1).encode(),
    "two objects on one line": good(5) + b" " + good(6),
    "leading space": b" " + good(5),
    "not JSON": b"{this is not json}",
    "a JSON array": b'[{"gateway": "gw-1"}]',
    "invalid UTF-8": good(5).replace(b'"gateway":"gw-1"', b'"gateway":"gw-\xff"'),
    "a key given twice": good(5).replace(b'{"gateway":"gw-1"', b'{"gateway":"gw-1","gateway":"gw-9"', 1),
    "empty": b"",
}


@pytest.mark.parametrize("body", list(STEP_ASIDE.values()), ids=list(STEP_ASIDE))
def test_the_group_path_steps_aside_for_anything_not_plainly_good(body: bytes) -> None:
    """With one envelope the group path does not take, the whole group goes envelope by envelope."""
    for bodies in ([body], [good(1), body], [body, good(2, form="readings")]):
        assert group_table(bodies) is None, bodies


def test_a_group_of_both_forms_steps_aside() -> None:
    assert group_table([good(1), good(2, form="readings")]) is None
    assert group_table([good(1), good(2)]) is not None
    assert group_table([good(1, form="readings"), good(2, form="readings")]) is not None


def test_only_a_large_group_is_worth_arrows_reader() -> None:
    bodies = [good(b) for b in range(GROUP_MIN_BODIES)]
    limits = {"now_us": NOW_US, "max_future_s": CHECK["max_future_s"], "max_readings": MAX}
    taken = good_group(bodies, **limits)
    assert taken is not None and taken[0].batch == list(range(GROUP_MIN_BODIES))
    assert taken[1].num_rows == 10 * GROUP_MIN_BODIES
    assert good_group(bodies[1:], **limits) is None  # one fewer: each envelope through msgspec
    assert good_group([*bodies[1:], good(99, form="text")], **limits) is None


def test_a_group_of_good_batches_stores_only_the_new_and_allowed_ones(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """Repeats (in the group and from before) are answered as duplicates and another gateway's site is
    refused, and neither is written: the group's record is cut down to the new batches."""
    caplog.set_level(logging.WARNING)
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    hall_a_only = Principal("acme", Role.GATEWAY, "k-hall-a", site="hall-a")
    stored_before = admit(pipeline, [(gateway, orjson.dumps(envelope("gw-1", 40)))])
    assert outcomes(stored_before)[0].accepted == 10
    wal = pipeline.state_dir
    before = len(log_records(wal))

    items = [
        (gateway, orjson.dumps(envelope("gw-1", 41))),
        (gateway, orjson.dumps(envelope("gw-1", 40))),  # stored by the call before
        (gateway, orjson.dumps(envelope("gw-2", 41, site="hall-b", n=25))),
        (hall_a_only, orjson.dumps(envelope("gw-2", 42, site="hall-b"))),  # not this key's site
        (gateway, orjson.dumps(envelope("gw-1", 41))),  # the first again, in the same group
        (gateway, orjson.dumps(envelope("gw-1", 43, n=3))),
    ]
    # More batches, so that the group is large enough for Arrow's reader.
    items += [(gateway, orjson.dumps(envelope("gw-2", b, site="hall-b", n=2))) for b in range(50, 80)]
    bodies = [body for _, body in items]
    assert len(bodies) >= GROUP_MIN_BODIES and group_table(bodies, utc_now_us()) is not None
    answers = admit(pipeline, items, transport="mqtt")

    assert isinstance(answers[3], Forbidden) and answers[3].details.get("field") == "site", answers[3]
    got = outcomes(answers)
    assert {i: (o.accepted, o.rejected, o.duplicate) for i, o in got.items()} == {
        0: (10, 0, False),
        1: (0, 0, True),
        2: (25, 0, False),
        4: (0, 0, True),
        5: (3, 0, False),
        **{i: (2, 0, False) for i in range(6, len(items))},
    }
    (rec,) = log_records(wal)[before:]
    assert rec.transport == "mqtt"
    assert rec.parts == [
        records.Part("gw-1", "hall-a", 41, 10),
        records.Part("gw-2", "hall-b", 41, 25),
        records.Part("gw-1", "hall-a", 43, 3),
        *[records.Part("gw-2", "hall-b", b, 2) for b in range(50, 80)],
    ]
    assert [t["value"].to_pylist() for _, t in rec.batches()] == [
        [41000.0 + i for i in range(10)],
        [41000.0 + i for i in range(25)],
        [43000.0 + i for i in range(3)],
        *[[b * 1000.0, b * 1000.0 + 1] for b in range(50, 80)],
    ]
    assert rec.quarantine.num_rows == 0
    assert reached_the_worker(pipeline, groups=1)  # the large group; the first call was too small
    if not pipeline.settings.ingest.workers:  # in process: the group path wrote it
        assert sample(pipeline.metrics, "ironwatch_ingest_arrow_groups_total", transport="mqtt") == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
