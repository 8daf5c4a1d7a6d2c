"""Ingest workers: envelopes decoded and checked in worker processes give what the server gives alone.

``prepare`` (the step a worker runs) against ``check_many`` in process; a real pipeline with a real
worker process: a group written as the worker prepared it, a group the server decodes again (a
duplicate among it), and a worker killed with SIGKILL (the group is decoded in the server, a new
worker takes the next one). Counts come from the write-ahead log's records and the lake.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator

import orjson
import pytest
from test_groups import (
    NOW_US,
    PER_BATCH_SQL,
    admit,
    envelope,
    lake_rows,
    log_records,
    outcomes,
    same_rows,
    start_pipeline,
    worker_groups,
)

from conftest import Lab, wait_until
from ironwatch.errors import MalformedBody
from ironwatch.ingest import Pipeline, workers
from ironwatch.ingest import record as records
from ironwatch.ingest.decode import decode_many
from ironwatch.ingest.validate import check_many
from ironwatch.ingest.workers import Head, Limits, prepare
from ironwatch.model import Principal, Role

LIMITS = Limits(max_readings=10_000, max_future_s=600.0, max_errors=100)
NOW_MS = NOW_US // 1000


def bad_readings(gateway: str, batch: int) -> bytes:
    """Ten readings of which reading 2 has a NaN value and reading 5 a sensor outside the id pattern."""
    doc = envelope(gateway, batch, form="readings", now_ms=NOW_MS)
    doc["readings"][2]["value"] = float("nan")
    doc["readings"][5]["sensor"] = "no spaces allowed"
    return json.dumps(doc).encode()


def test_prepare_gives_what_decoding_and_checking_in_process_gives() -> None:
    bodies = [
        orjson.dumps(envelope("gw-1", 1, now_ms=NOW_MS)),
        orjson.dumps(envelope("gw-1", 2, form="readings", now_ms=NOW_MS)),
        b"[1, 2, 3]",  # JSON, but not an envelope
        bad_readings("gw-2", 7),
        orjson.dumps(envelope("gw-2", 8, site="hall-b", form="text", now_ms=NOW_MS)),
        b'{"gateway": "gw-1", "batch": "three", "site": "hall-a", "columns": {}}',
    ]
    done = prepare("acme", "mqtt", bodies, now_us=NOW_US, limits=LIMITS)

    assert [h is None for h in done.heads] == [False, False, True, False, False, True]
    decodable = [d for d in decode_many(bodies, max_readings=10_000) if not isinstance(d, Exception)]
    expected = check_many(
        decodable,
        now_us=NOW_US,
        max_future_s=600.0,
        max_errors=100,
        received_at_us=NOW_US,
        transport="mqtt",
    )
    heads = [h for h in done.heads if h is not None]
    assert heads == [
        Head(d.gateway, d.site, d.batch, one.accepted, one.rejected, one.errors)
        for d, one in zip(decodable, expected.items, strict=True)
    ]
    assert [(h.accepted, h.rejected) for h in heads] == [(10, 0), (10, 0), (8, 2), (10, 0)]
    assert [(e["index"], e["field"]) for e in heads[2].errors] == [(2, "value"), (5, "sensor")]

    rec = records.decode(done.payload)
    assert (rec.tenant, rec.transport, rec.received_at_us) == ("acme", "mqtt", NOW_US)
    assert rec.parts == [records.Part(h.gateway, h.site, h.batch, h.accepted) for h in heads]
    assert same_rows(rec.good, expected.good)
    assert same_rows(rec.quarantine, expected.quarantine)


def test_prepare_of_nothing_usable_is_an_empty_record() -> None:
    done = prepare("acme", "http", [b"{", b"null"], now_us=NOW_US, limits=LIMITS)
    assert done.heads == [None, None]
    rec = records.decode(done.payload)
    assert rec.parts == [] and rec.good.num_rows == 0 and rec.quarantine.num_rows == 0


# a pipeline with one worker process --------------------------------------------------------------
GATEWAY = Principal("acme", Role.GATEWAY, "k-any")


@pytest.fixture
def pipeline(lab: Lab) -> Iterator[Pipeline]:
    lab.tenant("acme", "gateway")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    lab.store.add_gateway("acme", "gw-2", "hall-b")
    started = start_pipeline(lab, workers=1)
    try:
        yield started
    finally:
        started.stop()


def the_pids(pipeline: Pipeline) -> list[int]:
    assert pipeline._workers is not None
    return pipeline._workers.pids


def test_a_group_of_new_batches_is_written_as_the_worker_prepared_it(pipeline: Pipeline) -> None:
    items = [(GATEWAY, orjson.dumps(envelope("gw-1", b))) for b in range(1, 5)]
    items += [(GATEWAY, bad_readings("gw-2", 1).replace(b"hall-a", b"hall-b"))]
    before = len(log_records(pipeline.state_dir))

    got = outcomes(admit(pipeline, items, transport="mqtt"))

    assert worker_groups(pipeline) == {"prepared": 1, "trimmed": 0, "unavailable": 0}
    assert {i: (o.accepted, o.rejected, o.duplicate) for i, o in got.items()} == {
        0: (10, 0, False),
        1: (10, 0, False),
        2: (10, 0, False),
        3: (10, 0, False),
        4: (8, 2, False),
    }
    (rec,) = log_records(pipeline.state_dir)[before:]
    assert rec.parts == [records.Part("gw-1", "hall-a", b, 10) for b in range(1, 5)] + [
        records.Part("gw-2", "hall-b", 1, 8)
    ]
    assert pipeline.flush(30), pipeline.flush_error
    root = pipeline.root_of("acme")
    assert lake_rows(root, PER_BATCH_SQL) == [("gw-1", b, 10, 10) for b in range(1, 5)] + [("gw-2", 1, 8, 8)]
    assert lake_rows(root, 'SELECT gateway, batch, "index", field FROM quarantine ORDER BY ALL') == [
        ("gw-2", 1, 2, "value"),
        ("gw-2", 1, 5, "sensor"),
    ]
    # Sensors seen first in a worker's record are registered as discovered, as any others.
    assert {s["sensor"] for s in pipeline.store.sensors("acme")} >= {f"s-{i:04d}" for i in range(10)}


def test_a_group_with_duplicates_and_a_broken_body_is_trimmed_to_its_new_batches(
    pipeline: Pipeline,
) -> None:
    hall_b_bad = [bad_readings("gw-2", b).replace(b"hall-a", b"hall-b") for b in (4, 5)]
    earlier = [(GATEWAY, orjson.dumps(envelope("gw-1", 1))), (GATEWAY, hall_b_bad[0])]
    first = outcomes(admit(pipeline, earlier))  # two batches: no worker
    assert [(o.accepted, o.rejected) for o in first.values()] == [(10, 0), (8, 2)]
    assert worker_groups(pipeline) == {"prepared": 0, "trimmed": 0, "unavailable": 0}
    before = len(log_records(pipeline.state_dir))

    answers = admit(
        pipeline,
        [
            (GATEWAY, orjson.dumps(envelope("gw-1", 1))),  # stored before: a duplicate
            (GATEWAY, hall_b_bad[0]),  # stored before, with its two quarantined readings
            (GATEWAY, orjson.dumps(envelope("gw-1", 2))),
            (GATEWAY, b"{broken"),
            (GATEWAY, hall_b_bad[1]),
            (GATEWAY, orjson.dumps(envelope("gw-1", 3))),
            (GATEWAY, orjson.dumps(envelope("gw-1", 3))),  # twice in one group
        ],
        transport="mqtt",
    )
    assert isinstance(answers[3], MalformedBody), answers[3]
    got = outcomes(answers)
    assert {i: (o.accepted, o.rejected, o.duplicate) for i, o in got.items()} == {
        0: (0, 0, True),
        1: (0, 0, True),
        2: (10, 0, False),
        4: (8, 2, False),
        5: (10, 0, False),
        6: (0, 0, True),
    }
    assert worker_groups(pipeline) == {"prepared": 0, "trimmed": 1, "unavailable": 0}
    (rec,) = log_records(pipeline.state_dir)[before:]  # the worker's record, cut to the new batches
    assert rec.parts == [
        records.Part("gw-1", "hall-a", 2, 10),
        records.Part("gw-2", "hall-b", 5, 8),
        records.Part("gw-1", "hall-a", 3, 10),
    ]
    assert [t["value"][0].as_py() for _, t in rec.batches()] == [2000.0, 5000.0, 3000.0]
    kept = rec.quarantine.select(["gateway", "batch", "index"]).to_pylist()
    assert [tuple(r.values()) for r in kept] == [("gw-2", 5, 2), ("gw-2", 5, 5)]

    assert pipeline.flush(30), pipeline.flush_error
    root = pipeline.root_of("acme")
    assert lake_rows(root, PER_BATCH_SQL) == [
        ("gw-1", 1, 10, 10),
        ("gw-1", 2, 10, 10),
        ("gw-1", 3, 10, 10),
        ("gw-2", 4, 8, 8),
        ("gw-2", 5, 8, 8),
    ]
    assert lake_rows(root, "SELECT batch, \"index\" FROM quarantine WHERE gateway = 'gw-2' ORDER BY ALL") == [
        (4, 2),
        (4, 5),
        (5, 2),
        (5, 5),
    ]


def test_a_group_of_duplicates_only_writes_nothing(pipeline: Pipeline) -> None:
    bodies = [orjson.dumps(envelope("gw-1", b)) for b in range(1, 6)]
    for body in bodies:  # one at a time: no worker
        outcomes(admit(pipeline, [(GATEWAY, body)]))
    before = len(log_records(pipeline.state_dir))
    got = outcomes(admit(pipeline, [(GATEWAY, body) for body in bodies], transport="mqtt"))
    assert [o.duplicate for o in got.values()] == [True] * 5
    assert worker_groups(pipeline) == {"prepared": 0, "trimmed": 1, "unavailable": 0}
    assert len(log_records(pipeline.state_dir)) == before


def test_a_killed_worker_costs_one_group_its_offload_and_nothing_else(pipeline: Pipeline) -> None:
    (pid,) = the_pids(pipeline)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _exited(pid), 10, what="the worker to die")

    got = outcomes(admit(pipeline, [(GATEWAY, orjson.dumps(envelope("gw-1", b))) for b in range(1, 6)]))
    assert [o.accepted for o in got.values()] == [10] * 5
    assert worker_groups(pipeline) == {"prepared": 0, "trimmed": 0, "unavailable": 1}

    (new,) = the_pids(pipeline)
    assert new != pid
    got = outcomes(
        admit(pipeline, [(GATEWAY, orjson.dumps(envelope("gw-2", b, site="hall-b"))) for b in range(6)])
    )
    assert [o.accepted for o in got.values()] == [10] * 6
    assert worker_groups(pipeline)["prepared"] == 1
    assert pipeline.flush(30), pipeline.flush_error
    assert lake_rows(
        pipeline.root_of("acme"), "SELECT gateway, count(*) FROM readings GROUP BY 1 ORDER BY 1"
    ) == [
        ("gw-1", 50),
        ("gw-2", 60),
    ]


def test_a_hung_worker_is_replaced_and_its_group_decoded_in_the_server(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "ANSWER_TIMEOUT_S", 0.5)
    (pid,) = the_pids(pipeline)
    os.kill(pid, signal.SIGSTOP)  # alive, but takes nothing and never answers
    try:
        # ~2 MB: more than the pipe holds, so even writing the request to the worker would block.
        big = [(GATEWAY, orjson.dumps(envelope("gw-1", b, n=2000))) for b in range(1, 26)]
        assert sum(len(body) for _, body in big) > 2 * workers.PIPE_BYTES
        got = outcomes(admit(pipeline, big))
        assert [o.accepted for o in got.values()] == [2000] * 25
        assert worker_groups(pipeline) == {"prepared": 0, "trimmed": 0, "unavailable": 1}
        wait_until(lambda: _exited(pid), 10, what="the hung worker to be killed")
        (new,) = the_pids(pipeline)
        assert new != pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # The replacement, started a moment ago, may still be importing its modules: on a slow machine
    # its first answer can take longer than the half second that found the hung worker.
    monkeypatch.setattr(workers, "ANSWER_TIMEOUT_S", 30.0)
    got = outcomes(admit(pipeline, [(GATEWAY, orjson.dumps(envelope("gw-1", b))) for b in range(26, 30)]))
    assert [o.accepted for o in got.values()] == [10] * 4
    assert worker_groups(pipeline)["prepared"] == 1


def test_stopping_the_pipeline_stops_its_workers(lab: Lab) -> None:
    lab.tenant("acme", "gateway")
    pipeline = start_pipeline(lab, workers=2)
    pids = the_pids(pipeline)
    assert len(pids) == 2
    pipeline.stop()
    for pid in pids:
        wait_until(lambda pid=pid: _exited(pid), 10, what=f"worker {pid} to exit")


def _exited(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (a zombie has exited; its parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
