"""A tenant's storage that cannot be written: the server still stops, and nothing acknowledged is lost."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import orjson
from test_groups import PER_BATCH_SQL, envelope, lake_rows, start_pipeline

from conftest import Lab
from ironwatch.model import Principal, Role


def test_a_flush_that_keeps_failing_does_not_hold_up_stop_and_is_done_at_the_next_start(lab: Lab) -> None:
    lab.tenant("acme", "gateway")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    root = lab.data_dir / "lake" / "acme"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the tenant's folder should be: nothing can be written under it")

    pipeline = start_pipeline(lab)
    answered: Future[Any] = Future()
    gateway = Principal("acme", Role.GATEWAY, "k")
    pipeline.ingest_many(
        [(gateway, orjson.dumps(envelope("gw-1", 1)))],
        "http",
        lambda _, outcome: answered.set_result(outcome),
    )
    assert answered.result(10).accepted == 10  # durable in the log
    assert not pipeline.flush(2)  # the lake cannot take it
    assert "flushing segment" in (pipeline.flush_error or "")
    started = time.monotonic()
    pipeline.stop()
    assert time.monotonic() - started < 10  # was: retried for ever, and stop never returned
    assert list((lab.data_dir / "wal").glob("*.wal"))  # the readings wait in the log

    root.unlink()
    pipeline = start_pipeline(lab)
    try:
        assert pipeline.flush(30)
        assert lake_rows(pipeline.root_of("acme"), PER_BATCH_SQL) == [("gw-1", 1, 10, 10)]
    finally:
        pipeline.stop()
