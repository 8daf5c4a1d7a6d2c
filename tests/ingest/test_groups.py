"""Batches admitted in groups: several batches in one log record, checked together, answered each.

The record format (a part per batch, and records written before parts existed), ``check_many``
against ``check``, ``Pipeline.ingest_many`` on a pipeline over a real data directory, and MQTT end
to end through a real Mosquitto and ``ironwatch server``: a fast stream of small messages, and
``kill -9`` while groups are being admitted. Counts come from the ``readings`` view over the Parquet
files the pipeline wrote, and from the write-ahead log's own records.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import struct
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from conftest import Lab
from ironwatch import config, lake
from ironwatch.errors import Forbidden, MalformedBody
from ironwatch.ingest import Metrics, Outcome, Pipeline
from ironwatch.ingest import record as records
from ironwatch.ingest.decode import Decoded, decode
from ironwatch.ingest.validate import WAL_SCHEMA, check, check_many, whole_message
from ironwatch.ingest.wal import frame, read_records, segment_seq
from ironwatch.model import Principal, Role

NOW_US = 1_795_540_000_000_000  # 2026-11-24T14:26:40Z, for checks that take the time as an argument
CHECK: dict[str, Any] = {
    "now_us": NOW_US,
    "max_future_s": 600.0,
    "max_errors": 100,
    "received_at_us": NOW_US,
    "transport": "mqtt",
}


# envelopes -------------------------------------------------------------------------------------
def envelope(
    gateway: str, batch: int, *, site: str = "hall-a", n: int = 10, form: str = "columns", now_ms: int = 0
) -> dict[str, Any]:
    """Batch ``batch`` of ``gateway``: ``n`` readings one ms apart whose values name the batch.

    ``form`` is ``columns`` or ``readings`` (epoch milliseconds) or ``text`` (RFC 3339 strings).
    """
    base_ms = (now_ms or int(time.time() * 1000)) - 60_000
    ts: list[Any] = [base_ms + i for i in range(n)]
    sensors = [f"s-{i:04d}" for i in range(n)]
    values = [batch * 1000.0 + i for i in range(n)]
    doc: dict[str, Any] = {"gateway": gateway, "batch": batch, "site": site}
    if form == "text":
        ts = [datetime.fromtimestamp(t / 1000, UTC).isoformat().replace("+00:00", "Z") for t in ts]
    if form == "columns":
        doc["columns"] = {"ts": ts, "sensor": sensors, "metric": ["temperature"] * n, "value": values}
    else:
        doc["readings"] = [
            {"ts": t, "sensor": s, "metric": "temperature", "value": v}
            for t, s, v in zip(ts, sensors, values, strict=True)
        ]
    return doc


def spoiled(doc: dict[str, Any], changes: dict[int, tuple[str, Any]]) -> bytes:
    """A row-form envelope as JSON with reading ``i``'s field set to a bad value (NaN written as ``NaN``)."""
    readings = [dict(r) for r in doc["readings"]]
    for i, (field, value) in changes.items():
        readings[i][field] = value
    return json.dumps({**doc, "readings": readings}).encode()


def decoded(doc: dict[str, Any] | bytes) -> Decoded:
    return decode(doc if isinstance(doc, bytes) else orjson.dumps(doc), max_readings=10_000)


def wal_table(values: Sequence[float]) -> pa.Table:
    """Good readings as the log keeps them, one per value."""
    n = len(values)
    return pa.table(
        {
            "ts": pa.array([NOW_US - 1_000_000 + i for i in range(n)], pa.int64()),
            "sensor": [f"s-{i}" for i in range(n)],
            "metric": ["rpm"] * n,
            "value": pa.array(values, pa.float64()),
        },
        schema=WAL_SCHEMA,
    )


def ipc(table: pa.Table) -> bytes:
    if table.num_rows == 0:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def old_payload(
    gateway: str | None, site: str | None, batch: int | None, good: pa.Table, bad: pa.Table
) -> bytes:
    """A log payload as written before records had parts: one batch named in the header, or none."""
    good_bytes, bad_bytes = ipc(good), ipc(bad)
    header = orjson.dumps(
        {
            "tenant": "acme",
            "transport": "http",
            "received_at_us": NOW_US,
            "gateway": gateway,
            "site": site,
            "batch": batch,
            "good_bytes": len(good_bytes),
            "bad_bytes": len(bad_bytes),
        }
    )
    return struct.pack("<I", len(header)) + header + good_bytes + bad_bytes


def a_quarantine_row(raw: bytes = b"not json") -> pa.Table:
    return whole_message(
        raw,
        "malformed: body",
        received_at_us=NOW_US,
        transport="mqtt",
        topic="ironwatch/acme/hall-a/gw-1/readings",
    )


# 1. records ------------------------------------------------------------------------------------
def test_a_record_of_three_batches_reads_back_with_each_batch_its_own_readings() -> None:
    parts = [
        records.Part("gw-1", "hall-a", 7, 3),
        records.Part("gw-2", "hall-b", 1, 0),  # every reading of this batch went to quarantine
        records.Part("gw-3", "hall-c", 42, 2),
    ]
    good = wal_table([1.0, 2.0, 3.0, 4.0, 5.0])
    rec = records.Record("acme", "mqtt", NOW_US, parts, good, a_quarantine_row())
    back = records.decode(records.encode(rec))
    assert (back.tenant, back.transport, back.received_at_us) == ("acme", "mqtt", NOW_US)
    assert back.parts == parts
    assert back.good.equals(good)
    assert back.quarantine.equals(rec.quarantine)
    assert [(part, t["value"].to_pylist()) for part, t in back.batches()] == [
        (parts[0], [1.0, 2.0, 3.0]),
        (parts[1], []),
        (parts[2], [4.0, 5.0]),
    ]
    assert [t.schema for _, t in back.batches()] == [WAL_SCHEMA] * 3


@pytest.mark.parametrize("batch", [7, 0])
def test_a_record_in_the_old_header_format_reads_back_as_one_batch(batch: int) -> None:
    good = wal_table([1.5, 2.5, 3.5])
    back = records.decode(old_payload("gw-1", "hall-a", batch, good, a_quarantine_row()))
    assert back.parts == [records.Part("gw-1", "hall-a", batch, 3)]
    assert [(p, t.equals(good)) for p, t in back.batches()] == [(back.parts[0], True)]
    assert back.quarantine.num_rows == 1 and back.tenant == "acme" and back.received_at_us == NOW_US


def test_an_old_record_whose_readings_all_went_to_quarantine_is_one_batch_of_none() -> None:
    back = records.decode(old_payload("gw-1", "hall-a", 3, wal_table([]), a_quarantine_row()))
    assert back.parts == [records.Part("gw-1", "hall-a", 3, 0)]
    assert back.good.num_rows == 0 and back.quarantine.num_rows == 1


def test_an_old_quarantine_record_has_no_batch() -> None:
    bad = a_quarantine_row(b"{broken")
    back = records.decode(old_payload(None, None, None, wal_table([]), bad))
    assert back.parts == [] and list(back.batches()) == []
    assert back.good.num_rows == 0
    assert back.quarantine.equals(bad)


# 2. check_many ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "forms",
    [
        ["columns", "columns", "readings", "columns"],  # one timestamp form: one pass over them all
        ["text", "text", "text", "text"],  # RFC 3339 text: one pass too
        ["columns", "text", "readings", "text"],  # two forms: each batch on its own
    ],
)
def test_a_group_of_good_batches_gives_what_checking_each_alone_gives(forms: list[str]) -> None:
    now_ms = NOW_US // 1000
    batches = [
        decoded(envelope("gw-1", 1, form=forms[0], now_ms=now_ms)),
        decoded(envelope("gw-2", 1, site="hall-b", n=25, form=forms[1], now_ms=now_ms)),
        decoded(envelope("gw-1", 2, n=1, form=forms[2], now_ms=now_ms)),
        decoded(envelope("gw-1", 3, n=7, form=forms[3], now_ms=now_ms)),
    ]
    group = check_many(batches, **CHECK)
    alone = [check(d, **CHECK) for d in batches]
    assert len(group.items) == len(batches)
    for together, by_itself in zip(group.items, alone, strict=True):
        assert together.good.equals(by_itself.good)
        assert together.errors == by_itself.errors == []
        assert together.quarantine.num_rows == 0
    assert [c.accepted for c in group.items] == [10, 25, 1, 7]
    assert group.good.equals(pa.concat_tables([c.good for c in alone]))
    assert group.good.schema == WAL_SCHEMA
    assert group.quarantine.num_rows == 0


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables, where NaN equals NaN (``Table.equals`` says NaN differs from itself)."""
    return bool(a.schema == b.schema and str(a.to_pylist()) == str(b.to_pylist()))


def test_a_group_with_bad_readings_names_each_batch_and_its_own_indices() -> None:
    now_ms = NOW_US // 1000
    nan = spoiled(envelope("gw-1", 2, n=6, form="readings", now_ms=now_ms), {2: ("value", float("nan"))})
    future_and_bad_sensor = spoiled(
        envelope("gw-2", 6, site="hall-b", n=5, form="readings", now_ms=now_ms),
        {0: ("ts", now_ms + 86_400_000), 3: ("sensor", "no such sensor")},
    )
    batches = [
        decoded(envelope("gw-1", 1, n=4, now_ms=now_ms)),
        decoded(nan),
        decoded(envelope("gw-2", 5, site="hall-b", n=3, now_ms=now_ms)),
        decoded(future_and_bad_sensor),
    ]
    group = check_many(batches, **CHECK)
    alone = [check(d, **CHECK) for d in batches]

    assert [[(e["index"], e["field"]) for e in c.errors] for c in group.items] == [
        [],
        [(2, "value")],
        [],
        [(0, "ts"), (3, "sensor")],
    ]
    assert [(c.accepted, c.rejected) for c in group.items] == [(4, 0), (5, 1), (3, 0), (3, 2)]
    for together, by_itself in zip(group.items, alone, strict=True):
        assert together.good.equals(by_itself.good)
        assert together.errors == by_itself.errors
        assert same_rows(together.quarantine, by_itself.quarantine)
    kept = group.quarantine.select(["gateway", "site", "batch", "index", "field", "transport"]).to_pylist()
    assert [tuple(row.values()) for row in kept] == [
        ("gw-1", "hall-a", 2, 2, "value", "mqtt"),
        ("gw-2", "hall-b", 6, 0, "ts", "mqtt"),
        ("gw-2", "hall-b", 6, 3, "sensor", "mqtt"),
    ]
    assert group.good.equals(pa.concat_tables([c.good for c in group.items]))
    assert group.good["value"].to_pylist() == [
        *[1000.0 + i for i in range(4)],
        *[2000.0 + i for i in (0, 1, 3, 4, 5)],
        *[5000.0 + i for i in range(3)],
        *[6000.0 + i for i in (1, 2, 4)],
    ]


# 3. Pipeline.ingest_many -----------------------------------------------------------------------
class Answer(Future[Outcome]):
    """The future outcome of one admitted item, counting how often the pipeline answered it."""

    def __init__(self) -> None:
        super().__init__()
        self.times = 0

    def answer(self, outcome: Outcome | BaseException) -> None:
        self.times += 1
        if self.done():
            return
        if isinstance(outcome, BaseException):
            self.set_exception(outcome)
        else:
            self.set_result(outcome)


def admit(
    pipeline: Pipeline, items: Sequence[tuple[Principal, bytes]], transport: str = "http"
) -> list[Future[Outcome] | Exception]:
    """``Pipeline.ingest_many`` with one answer per item: a future of its outcome, or why it was refused."""
    answers = [Answer() for _ in items]
    refused = pipeline.ingest_many(
        items, transport, lambda i, outcome: answers[i].answer(outcome), may_register=False, may_offload=True
    )
    return [r if r is not None else a for r, a in zip(refused, answers, strict=True)]


def outcomes(answers: list[Future[Outcome] | Exception]) -> dict[int, Outcome]:
    """The outcome of every admitted item, once durable; each item is answered once."""
    got = {i: a.result(timeout=30) for i, a in enumerate(answers) if isinstance(a, Future)}
    twice = [i for i, a in enumerate(answers) if isinstance(a, Answer) and a.times != 1]
    assert not twice, f"items {twice} were answered more than once"
    return got


def log_records(wal: Path) -> list[records.Record]:
    """Every record in the write-ahead log directory, in order."""
    return [
        records.decode(payload)
        for path in sorted(wal.glob("*.wal"), key=segment_seq)
        for payload in read_records(path)
    ]


def lake_rows(root: lake.Root, sql: str) -> list[tuple[Any, ...]]:
    answer = lake.query.run(root, sql)
    return list(zip(*(c.to_pylist() for c in answer.columns), strict=True))


PER_BATCH_SQL = (
    "SELECT gateway, batch, count(*), count(DISTINCT (sensor, ts, value)) FROM readings "
    "GROUP BY gateway, batch ORDER BY gateway, batch"
)


def start_pipeline(lab: Lab, workers: int = 0) -> Pipeline:
    """A pipeline over the lab's data directory; the log is flushed only when asked to."""
    flags = {
        "server.data_dir": str(lab.data_dir),
        "store.url": lab.store_url,
        "lake.flush_process": False,
        "lake.flush_interval_s": 3600.0,
        "lake.compaction": False,
        "ingest.workers": workers,
    }
    pipeline = Pipeline(config.load(flags, env={}), lab.store, Metrics())
    pipeline.start()
    return pipeline


@pytest.fixture(params=[0, 1], ids=["in-process", "one-worker"])
def pipeline(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """A pipeline for tenant acme (gateways gw-1 in hall-a, gw-2 in hall-b), without and with a worker."""
    lab.tenant("acme", "gateway")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    lab.store.add_gateway("acme", "gw-2", "hall-b")
    started = start_pipeline(lab, request.param)
    try:
        yield started
    finally:
        started.stop()


def test_ingest_many_writes_one_record_and_answers_each_batch(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    hall_a_only = Principal("acme", Role.GATEWAY, "k-hall-a", site="hall-a")
    analyst = Principal("acme", Role.ANALYST, "k-analyst")
    three_bad = spoiled(
        envelope("gw-2", 3, site="hall-b", form="readings"),
        {1: ("value", float("nan")), 7: ("sensor", "bad sensor")},
    )
    items = [
        (gateway, orjson.dumps(envelope("gw-1", 1))),
        (gateway, orjson.dumps(envelope("gw-2", 1, site="hall-b", form="text"))),
        (gateway, b"{this is not json"),
        (gateway, orjson.dumps(envelope("gw-1", 2, form="readings"))),
        (hall_a_only, orjson.dumps(envelope("gw-2", 2, site="hall-b"))),
        (gateway, orjson.dumps(envelope("gw-1", 1))),  # the first item again, in the same group
        (gateway, three_bad),
        (analyst, orjson.dumps(envelope("gw-1", 9))),
    ]
    wal = pipeline.state_dir
    before = len(log_records(wal))
    answers = admit(pipeline, items)

    assert isinstance(answers[2], MalformedBody), answers[2]
    assert isinstance(answers[4], Forbidden) and answers[4].details.get("field") == "site", answers[4]
    assert isinstance(answers[7], Forbidden), answers[7]
    got = outcomes(answers)
    assert {i: (o.accepted, o.rejected, o.duplicate) for i, o in got.items()} == {
        0: (10, 0, False),
        1: (10, 0, False),
        3: (10, 0, False),
        5: (0, 0, True),
        6: (8, 2, False),
    }
    assert [(e["index"], e["field"]) for e in got[6].errors] == [(1, "value"), (7, "sensor")]

    (rec,) = log_records(wal)[before:]  # one record for the whole group, written before any flush
    assert rec.tenant == "acme" and rec.transport == "http"
    assert rec.parts == [
        records.Part("gw-1", "hall-a", 1, 10),
        records.Part("gw-2", "hall-b", 1, 10),
        records.Part("gw-1", "hall-a", 2, 10),
        records.Part("gw-2", "hall-b", 3, 8),
    ]
    assert [t["value"].to_pylist() for _, t in rec.batches()] == [
        [1000.0 + i for i in range(10)],
        [1000.0 + i for i in range(10)],
        [2000.0 + i for i in range(10)],
        [3000.0 + i for i in range(10) if i not in (1, 7)],
    ]
    kept = rec.quarantine.select(["gateway", "batch", "index", "field"]).to_pylist()
    assert [tuple(r.values()) for r in kept] == [("gw-2", 3, 1, "value"), ("gw-2", 3, 7, "sensor")]

    # Already stored: answered as duplicates at once; the new batch of the call is its own record.
    again = admit(
        pipeline,
        [
            (gateway, orjson.dumps(envelope("gw-1", 1))),
            (gateway, orjson.dumps(envelope("gw-1", 4))),
            (gateway, three_bad),
        ],
    )
    assert {i: (o.accepted, o.duplicate) for i, o in outcomes(again).items()} == {
        0: (0, True),
        1: (10, False),
        2: (0, True),
    }
    assert [r.parts for r in log_records(wal)[before + 1 :]] == [[records.Part("gw-1", "hall-a", 4, 10)]]
    assert reached_the_worker(pipeline, groups=1)  # the first call's group; the second is too small

    assert pipeline.flush(30), pipeline.flush_error
    root = pipeline.root_of("acme")
    assert lake_rows(root, PER_BATCH_SQL) == [
        ("gw-1", 1, 10, 10),
        ("gw-1", 2, 10, 10),
        ("gw-1", 4, 10, 10),
        ("gw-2", 1, 10, 10),
        ("gw-2", 3, 8, 8),
    ]
    assert lake_rows(root, 'SELECT gateway, batch, "index" FROM quarantine ORDER BY ALL') == [
        ("gw-2", 3, 1),
        ("gw-2", 3, 7),
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_http_batches_sent_in_one_turn_of_the_loop_are_admitted_as_one_group(pipeline: Pipeline) -> None:
    """``Pipeline.ingest`` (the HTTP path) gathers the batches of one loop turn into one group.

    Each request still gets exactly the answer it would get alone: its refusal raised, its outcome
    once durable, a repeat in the group answered as a duplicate.
    """
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    hall_a_only = Principal("acme", Role.GATEWAY, "k-hall-a", site="hall-a")
    analyst = Principal("acme", Role.ANALYST, "k-analyst")
    items = [
        (gateway, orjson.dumps(envelope("gw-1", 21))),
        (gateway, b"[1, 2"),
        (gateway, orjson.dumps(envelope("gw-2", 21, site="hall-b", form="readings"))),
        (hall_a_only, orjson.dumps(envelope("gw-2", 22, site="hall-b"))),
        (gateway, orjson.dumps(envelope("gw-1", 21))),  # the first again, in the same turn
        (analyst, orjson.dumps(envelope("gw-1", 23))),
        (gateway, orjson.dumps(envelope("gw-1", 24, form="text"))),
    ]
    before = len(log_records(pipeline.state_dir))

    answers = asyncio.run(send_together(pipeline, items))

    assert isinstance(answers[1], MalformedBody), answers[1]
    assert isinstance(answers[3], Forbidden) and answers[3].details.get("field") == "site", answers[3]
    assert isinstance(answers[5], Forbidden), answers[5]
    got = {i: a for i, a in enumerate(answers) if isinstance(a, Outcome)}
    assert {i: (o.accepted, o.rejected, o.duplicate) for i, o in got.items()} == {
        0: (10, 0, False),
        2: (10, 0, False),
        4: (0, 0, True),
        6: (10, 0, False),
    }
    (rec,) = log_records(pipeline.state_dir)[before:]  # one record, one fsync for the whole turn
    assert rec.parts == [
        records.Part("gw-1", "hall-a", 21, 10),
        records.Part("gw-2", "hall-b", 21, 10),
        records.Part("gw-1", "hall-a", 24, 10),
    ]
    assert sample(pipeline.metrics, "ironwatch_ingest_group_batches_count", transport="http") == 1
    assert sample(pipeline.metrics, "ironwatch_ingest_group_batches_sum", transport="http") == len(items)
    assert reached_the_worker(pipeline, groups=0)  # the event loop never waits for a worker

    # A lone request is a group of one, answered as before.
    alone = asyncio.run(asyncio.wait_for(pipeline.ingest(gateway, orjson.dumps(envelope("gw-1", 25))), 30))
    assert (alone.accepted, alone.duplicate) == (10, False)
    assert sample(pipeline.metrics, "ironwatch_ingest_group_batches_count", transport="http") == 2
    assert pipeline.flush(30), pipeline.flush_error
    assert lake_rows(pipeline.root_of("acme"), PER_BATCH_SQL) == [
        ("gw-1", 21, 10, 10),
        ("gw-1", 24, 10, 10),
        ("gw-1", 25, 10, 10),
        ("gw-2", 21, 10, 10),
    ]


def test_batches_of_a_loop_closed_before_its_turn_are_neither_stored_nor_kept(pipeline: Pipeline) -> None:
    """A server shutting down between reading a request and admitting it: nothing stored, nothing kept."""
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    body = orjson.dumps(envelope("gw-1", 31))
    loop = asyncio.new_event_loop()
    task = loop.create_task(pipeline.ingest(gateway, body))
    loop.call_soon(loop.stop)  # runs in the task's first turn: the admitting turn never comes
    loop.run_forever()
    loop.close()
    closed = weakref.ref(loop)
    del loop, task

    # The next request (another loop) is admitted, and the closed loop's batch is let go.
    again = asyncio.run(asyncio.wait_for(pipeline.ingest(gateway, body), 30))
    assert (again.accepted, again.duplicate) == (10, False)  # the first was never stored
    gc.collect()
    assert closed() is None


def worker_groups(pipeline: Pipeline) -> dict[str, float]:
    """How many groups took each path through the ingest workers so far."""
    return {
        path: sample(pipeline.metrics, "ironwatch_ingest_worker_groups_total", path=path) or 0.0
        for path in ("prepared", "trimmed", "unavailable")
    }


def reached_the_worker(pipeline: Pipeline, groups: int) -> bool:
    """With ingest workers, ``groups`` groups were offered to them; without, none could be."""
    offered = sum(worker_groups(pipeline).values())
    return offered == (groups if pipeline.settings.ingest.workers else 0)


def test_a_burst_of_http_batches_is_split_into_groups_of_at_most_512(pipeline: Pipeline) -> None:
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    items = [(gateway, orjson.dumps(envelope("gw-1", 100 + b, n=1))) for b in range(600)]
    before = len(log_records(pipeline.state_dir))
    answers = asyncio.run(send_together(pipeline, items))
    assert [a.accepted if isinstance(a, Outcome) else a for a in answers] == [1] * 600
    assert [len(r.parts) for r in log_records(pipeline.state_dir)[before:]] == [512, 88]
    assert sample(pipeline.metrics, "ironwatch_ingest_group_batches_count", transport="http") == 2


async def send_together(
    pipeline: Pipeline, items: Sequence[tuple[Principal, bytes]]
) -> list[Outcome | BaseException]:
    """``Pipeline.ingest`` of every item in one turn of the event loop; each answer or refusal."""
    calls = [pipeline.ingest(principal, body, "http") for principal, body in items]
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of one sample in the pipeline's Prometheus registry."""
    return metrics.registry.get_sample_value(name, labels)


def test_a_group_of_one_batch_sent_many_times_is_stored_once(pipeline: Pipeline) -> None:
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    body = orjson.dumps(envelope("gw-1", 11))
    answers = admit(pipeline, [(gateway, body)] * 50)
    got = outcomes(answers)
    assert [o.duplicate for o in got.values()].count(False) == 1 and len(got) == 50
    assert pipeline.flush(30)
    assert lake_rows(pipeline.root_of("acme"), PER_BATCH_SQL) == [("gw-1", 11, 10, 10)]


def test_each_tenant_of_a_group_gets_its_own_record(pipeline: Pipeline, lab: Lab) -> None:
    lab.tenant("beta", "gateway")
    lab.store.add_gateway("beta", "gw-1", "hall-a")
    acme, beta = (Principal(t, Role.GATEWAY, f"k-{t}") for t in ("acme", "beta"))
    before = len(log_records(pipeline.state_dir))
    answers = admit(
        pipeline,
        [
            (acme, orjson.dumps(envelope("gw-1", 1))),
            (beta, orjson.dumps(envelope("gw-1", 1))),  # the same gateway and batch, another tenant
            (acme, orjson.dumps(envelope("gw-2", 1, site="hall-b"))),
            (beta, orjson.dumps(envelope("gw-1", 2, n=3))),
            (acme, orjson.dumps(envelope("gw-1", 2, n=4))),
            (beta, orjson.dumps(envelope("gw-1", 3, n=5))),
            (acme, orjson.dumps(envelope("gw-2", 2, site="hall-b", n=6))),
            (beta, orjson.dumps(envelope("gw-1", 4, n=7))),
        ],
    )
    assert [o.duplicate for o in outcomes(answers).values()] == [False] * 8
    assert sorted((r.tenant, r.parts) for r in log_records(pipeline.state_dir)[before:]) == [
        (
            "acme",
            [
                records.Part("gw-1", "hall-a", 1, 10),
                records.Part("gw-2", "hall-b", 1, 10),
                records.Part("gw-1", "hall-a", 2, 4),
                records.Part("gw-2", "hall-b", 2, 6),
            ],
        ),
        (
            "beta",
            [
                records.Part("gw-1", "hall-a", 1, 10),
                records.Part("gw-1", "hall-a", 2, 3),
                records.Part("gw-1", "hall-a", 3, 5),
                records.Part("gw-1", "hall-a", 4, 7),
            ],
        ),
    ]
    assert reached_the_worker(pipeline, groups=2)
    assert pipeline.flush(30), pipeline.flush_error
    assert lake_rows(pipeline.root_of("acme"), PER_BATCH_SQL) == [
        ("gw-1", 1, 10, 10),
        ("gw-1", 2, 4, 4),
        ("gw-2", 1, 10, 10),
        ("gw-2", 2, 6, 6),
    ]
    assert lake_rows(pipeline.root_of("beta"), PER_BATCH_SQL) == [
        ("gw-1", 1, 10, 10),
        ("gw-1", 2, 3, 3),
        ("gw-1", 3, 5, 5),
        ("gw-1", 4, 7, 7),
    ]


@pytest.mark.parametrize(
    "far",
    [
        "9223372036854775808",  # 2**63: past int64, so the group's columns are built batch by batch
        "1e20",  # an integral float: JSON parsers give one for this and for integers >= 2**64
        "18446744073709551616",
    ],
)
def test_a_timestamp_beyond_int64_in_a_group_goes_to_quarantine_and_the_others_are_stored(
    pipeline: Pipeline, far: str
) -> None:
    gateway = Principal("acme", Role.GATEWAY, "k-any")
    doc = envelope("gw-1", 21, n=2, form="readings")
    far_away = orjson.dumps(doc).replace(str(doc["readings"][1]["ts"]).encode(), far.encode())
    answers = admit(
        pipeline,
        [
            (gateway, orjson.dumps(envelope("gw-1", 20))),
            (gateway, far_away),
            (gateway, orjson.dumps(envelope("gw-2", 20, site="hall-b"))),
            (gateway, orjson.dumps(envelope("gw-2", 21, site="hall-b", n=3))),
        ],
    )
    got = outcomes(answers)
    assert {i: (got[i].accepted, got[i].rejected) for i in (0, 2, 3)} == {
        0: (10, 0),
        2: (10, 0),
        3: (3, 0),
    }
    if isinstance(answers[1], Exception):
        raise answers[1]  # refused instead of naming the reading
    assert (got[1].accepted, got[1].rejected) == (1, 1)
    assert [(e["index"], e["field"]) for e in got[1].errors] == [(1, "ts")]
    assert pipeline.flush(30), pipeline.flush_error
    assert lake_rows(pipeline.root_of("acme"), PER_BATCH_SQL) == [
        ("gw-1", 20, 10, 10),
        ("gw-1", 21, 1, 1),
        ("gw-2", 20, 10, 10),
        ("gw-2", 21, 3, 3),
    ]
    assert reached_the_worker(pipeline, groups=1)


def test_an_old_format_log_left_by_a_crash_is_recovered_by_the_new_pipeline(lab: Lab) -> None:
    """An upgrade over a log the previous version left unflushed: its records still replay."""
    lab.tenant("acme", "gateway")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    wal = lab.data_dir / "wal"
    wal.mkdir(parents=True)
    now_us = int(time.time() * 1_000_000)
    good = wal_table([1.0, 2.0, 3.0, 4.0]).set_column(
        0, "ts", pa.array([now_us - 60_000_000 + i for i in range(4)], pa.int64())
    )
    (wal / f"{1:012d}.wal").write_bytes(
        frame(old_payload("gw-1", "hall-a", 5, good, a_quarantine_row().slice(0, 0)))
        + frame(old_payload(None, None, None, wal_table([]), a_quarantine_row(b"{old broken")))
    )
    pipeline = start_pipeline(lab)
    try:
        gateway = Principal("acme", Role.GATEWAY, "k-any")
        answers = admit(pipeline, [(gateway, orjson.dumps(envelope("gw-1", 5)))])
        assert outcomes(answers) == {0: Outcome(0, 0, True, [])}  # the ledger knows the old batch
        assert pipeline.flush(30), pipeline.flush_error
        root = pipeline.root_of("acme")
        assert lake_rows(root, PER_BATCH_SQL) == [("gw-1", 5, 4, 4)]
        assert lake_rows(root, "SELECT raw, batch FROM quarantine") == [("{old broken", None)]
    finally:
        pipeline.stop()
