"""Batch numbers live in the outbox, so a new outbox for a gateway the server knows (a box replaced,
a disk wiped) starts again at 1. The server would take those numbers for batches it holds and store
nothing of them. A new outbox therefore asks first: a heartbeat's answer names the highest batch
number of the gateway the server holds, and the outbox numbers its batches after it, over HTTP and
over MQTT (v5 request/response through the broker).
"""

from __future__ import annotations

import gzip
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from gw import duplicates, settle, simulator_config

from conftest import Broker, Lab
from ironwatch.gateway.agent import heartbeat_doc
from ironwatch.gateway.config import load
from ironwatch.gateway.outbox import open_outbox
from ironwatch.gateway.sender import DeadLetters, Sender, SendStats
from ironwatch.gateway.source import SAMPLE_SCHEMA
from ironwatch.gateway.uplink import Backoff, LinkDown, NoAnswer, open_uplink

GATEWAY = "gw-test"


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


def send_all(config_path: Path, outbox_path: Path, table: pa.Table) -> tuple[SendStats, int]:
    """Put ``table`` in the outbox at ``outbox_path`` as batches of 100 and send them all; the
    stats and the outbox's last batch number."""
    config = load(config_path)
    box = open_outbox(outbox_path, gateway=config.gateway, site=config.site, max_bytes=1 << 30)
    uplink = open_uplink(config)
    dead = DeadLetters(outbox_path.parent / "dead-letters.jsonl")
    sender = Sender(
        box,
        uplink,
        dead,
        Backoff(0.05, 0.2),
        in_flight=4,
        stop=threading.Event(),
        heartbeat=lambda: heartbeat_doc(box, int(time.time() * 1000), {}),
    )
    try:
        box.add(table)
        box.form_batches(100, max_age_s=0)
        deadline = time.monotonic() + 60
        while box.counts().batches:
            assert time.monotonic() < deadline, sender.stats
            sender.drain_once()
        return sender.stats, box.counts().last_batch
    finally:
        uplink.close()
        box.close()


@pytest.mark.parametrize("transport", ["http", "mqtt"])
def test_a_new_outbox_numbers_its_batches_after_those_the_server_holds(
    lab: Lab, tmp_path: Path, transport: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = lab.tenant("acme")
    if transport == "mqtt":
        broker: Broker = request.getfixturevalue("broker")
        lab.store.add_gateway("acme", GATEWAY, "hall-t")
        server = lab.server("--mqtt-url", broker.url)
        config = simulator_config(tmp_path / "gw", broker.url, tenant="acme")
    else:
        server = lab.server()
        config = simulator_config(tmp_path / "gw", server.url, key=tenant.keys["gateway"])
    start_ms = int(time.time() * 1000) - 3_600_000

    first, last = send_all(config, tmp_path / "gw" / "outbox.db", readings(300, start_ms, "s-old"))
    assert (first.duplicates, first.number_collisions, last) == (0, 0, 3)
    with server.client(tenant.keys["analyst"]) as analyst:  # over MQTT the PUBACKs were the broker's
        assert settle(analyst, GATEWAY, 300) == 300

    # The box replaced, its outbox file lost: the new one's batches 1, 2, 3 become 4, 5, 6.
    caplog.set_level(logging.WARNING, logger="ironwatch.gateway.sender")
    second, last = send_all(config, tmp_path / "gw" / "outbox-new.db", readings(300, start_ms, "s-new"))
    assert (second.duplicates, second.number_collisions, last) == (0, 0, 6)
    assert "already holds batches up to 3 of gateway gw-test" in caplog.text
    assert "numbers its batches from 4" in caplog.text

    with server.client(tenant.keys["analyst"]) as analyst:
        assert settle(analyst, GATEWAY, 600) == 600
        assert duplicates(analyst, GATEWAY) == 0
        sql = "SELECT sensor, min(batch), max(batch), count(*) FROM readings GROUP BY 1 ORDER BY 1"
        rows = analyst.post("/api/v1/query", json={"sql": sql, "format": "json"})
        assert rows.json()["rows"] == [["s-new", 4, 6, 300], ["s-old", 1, 3, 300]]

    # A third outbox after a restart of the second one's gateway keeps its numbers: only a new
    # outbox is renumbered.
    third, last = send_all(config, tmp_path / "gw" / "outbox-new.db", readings(100, start_ms, "s-more"))
    assert (third.duplicates, last) == (0, 7)


def test_over_mqtt_a_new_outbox_waits_for_a_server_that_is_down(
    lab: Lab, tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker takes heartbeats for a server that is down (its session is persistent), so no
    answer comes for a while: the new outbox keeps asking instead of numbering from 1."""
    tenant = lab.tenant("acme")
    lab.store.add_gateway("acme", GATEWAY, "hall-t")
    server = lab.server("--mqtt-url", broker.url)
    config = simulator_config(tmp_path / "gw", broker.url, tenant="acme")
    start_ms = int(time.time() * 1000) - 3_600_000
    send_all(config, tmp_path / "gw" / "outbox.db", readings(300, start_ms, "s-old"))
    with server.client(tenant.keys["analyst"]) as analyst:
        assert settle(analyst, GATEWAY, 300) == 300
    server.stop()

    caplog.set_level(logging.WARNING, logger="ironwatch.gateway.sender")
    done: list[tuple[SendStats, int]] = []
    new = threading.Thread(
        target=lambda: done.append(
            send_all(config, tmp_path / "gw" / "outbox-new.db", readings(300, start_ms, "s-new"))
        )
    )
    new.start()
    time.sleep(8)  # more than two unanswered heartbeats (timeout_s is 3 in the test config)
    assert not done and "sends nothing until the server answers" in caplog.text
    server.start()
    new.join(60)
    assert done and done[0][1] == 6
    with server.client(tenant.keys["analyst"]) as analyst:
        assert settle(analyst, GATEWAY, 600) == 600
        assert duplicates(analyst, GATEWAY) == 0


class _Silent(http.server.BaseHTTPRequestHandler):
    """A server that takes every heartbeat without saying what it holds, and answers every batch as
    a duplicate: as if the batch numbers were another outbox's."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/heartbeat"):
            answer: dict[str, Any] = {"recorded": True}
        else:
            batch = orjson.loads(gzip.decompress(body))
            answer = {"accepted": 0, "rejected": 0, "duplicate": True, "errors": [], "batch": batch["batch"]}
        data = orjson.dumps(answer)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def silent_server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_without_the_servers_answer_the_outbox_numbers_on_and_reports_reused_numbers(
    silent_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = simulator_config(tmp_path / "gw", silent_server, key="secret")
    caplog.set_level(logging.WARNING, logger="ironwatch.gateway.sender")
    stats, last = send_all(config, tmp_path / "gw" / "outbox.db", readings(300, 1_790_000_000_000, "s-1"))
    assert stats.failures == 0  # an answer without the number: asking again cannot help
    assert "the heartbeat's answer has no valid last_batch_stored" in caplog.text
    assert "numbering batches without the server's word" in caplog.text
    assert (last, stats.duplicates, stats.number_collisions) == (3, 3, 3)
    assert "was answered as a duplicate on its first send" in caplog.text


class _Scripted:
    """A server's side that answers no heartbeat: each ask takes 10 minutes of the test's clock and
    ends as the script says, "no answer" or "link down"."""

    target = "scripted"

    def __init__(self, script: str, clock: list[float]) -> None:
        self.script = list(script)
        self.clock = clock
        self.asked = 0

    def last_batch_stored(self, heartbeat: dict[str, Any]) -> int | None:
        self.asked += 1
        self.clock[0] += 600
        if self.script.pop(0) == "L":
            raise LinkDown("scripted: the link is down")
        raise NoAnswer("scripted: no answer", is_final=False)

    def send(self, batches: Any) -> list[Any]:
        return []

    def heartbeat(self, doc: dict[str, Any]) -> None:
        pass

    def check(self, heartbeat: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def test_only_time_with_heartbeats_taken_but_unanswered_counts_toward_giving_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [0.0]
    uplink = _Scripted("NNN" + "L" * 10 + "N" * 10, clock)
    box = open_outbox(tmp_path / "outbox.db", gateway=GATEWAY, site="hall-t", max_bytes=1 << 30)
    sender = Sender(
        box,
        uplink,
        DeadLetters(tmp_path / "dead.jsonl"),
        Backoff(0.001, 0.002),
        in_flight=1,
        stop=threading.Event(),
        heartbeat=lambda: {},
        clock=lambda: clock[0],
    )
    caplog.set_level(logging.WARNING, logger="ironwatch.gateway.sender")
    while box.numbering_is_provisional and uplink.asked < 30:
        sender.drain_once()
    # Unanswered: 1200 s before the link went down, then from the first answerless ask after it
    # (not counted, the clock restarts there) 4 x 600 s more: 3600 s at the 8th unanswered ask.
    assert (uplink.asked, box.numbering_is_provisional) == (3 + 10 + 5, False)
    assert caplog.text.count("sends nothing until the server answers") == 1
    assert caplog.text.count("uplink: scripted: the link is down") == 1  # said when the link goes down
    assert caplog.text.count("numbering batches without the server's word") == 1
    box.close()
