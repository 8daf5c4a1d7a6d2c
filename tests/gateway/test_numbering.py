"""Batch numbers live in the outbox: a new outbox for a gateway the server knows reuses them.

The server answers a reused number as a duplicate, so those readings are not stored; the gateway
cannot tell that from a batch it sent before a crash, except that a batch on its first send should
never be a duplicate. It says so, loudly.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from gw import simulator_config

from conftest import Lab
from ironwatch.gateway.config import load
from ironwatch.gateway.outbox import open_outbox
from ironwatch.gateway.sender import DeadLetters, Sender, SendStats
from ironwatch.gateway.source import SAMPLE_SCHEMA
from ironwatch.gateway.uplink import Backoff
from ironwatch.gateway.uplink_http import HttpUplink


def readings(n: int, start_ms: int, sensor: str) -> pa.Table:
    return pa.table(
        {
            "ts_ms": start_ms + np.arange(n) * 1000,
            "sensor": [sensor] * n,
            "metric": ["temperature_c"] * n,
            "value": np.arange(n, dtype=float),
        },
        schema=SAMPLE_SCHEMA,
    )


def send_all(config_path: Path, outbox_path: Path, table: pa.Table) -> SendStats:
    """Put ``table`` in the outbox at ``outbox_path`` as batches of 100 and send them all."""
    config = load(config_path)
    box = open_outbox(outbox_path, gateway=config.gateway, site=config.site, max_bytes=1 << 30)
    uplink = HttpUplink(config)
    dead = DeadLetters(outbox_path.parent / "dead-letters.jsonl")
    sender = Sender(box, uplink, dead, Backoff(0.05, 0.2), in_flight=4, stop=threading.Event())
    try:
        box.add(table)
        box.form_batches(100, max_age_s=0)
        while box.counts().batches:
            sender.drain_once()
    finally:
        uplink.close()
        box.close()
    return sender.stats


def test_a_new_outbox_reusing_batch_numbers_is_reported(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    config = simulator_config(tmp_path / "gw", server.url, key=tenant.keys["gateway"])
    start_ms = int(time.time() * 1000) - 3_600_000

    first = send_all(config, tmp_path / "gw" / "outbox.db", readings(300, start_ms, "s-old"))
    assert (first.duplicates, first.number_collisions) == (0, 0)

    # The box replaced, its outbox file lost: batches 1, 2, 3 again, with other readings.
    caplog.set_level(logging.ERROR, logger="ironwatch.gateway.sender")
    second = send_all(config, tmp_path / "gw" / "outbox-new.db", readings(300, start_ms, "s-new"))
    assert (second.duplicates, second.number_collisions) == (3, 3)
    assert "was answered as a duplicate on its first send" in caplog.text
