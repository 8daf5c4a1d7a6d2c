"""MQTT end to end with messages admitted in groups, through a real Mosquitto and ``ironwatch server``.

A fast stream of small messages (with repeated batches and broken messages among them) forms real
groups; ``kill -9`` while groups are being admitted loses no acknowledged batch and stores none twice.
The pipeline-level tests of groups are in ``test_groups.py``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_durability import gone, lake_writer_of
from test_groups import PER_BATCH_SQL, envelope, lake_rows, log_records
from test_mqtt import metric

from conftest import Broker, Lab, Server, Tenant, wait_until
from ironwatch import lake

HEAVY = os.environ.get("IRONWATCH_HEAVY") == "1"
Key = tuple[str, int]


# 4. and 5. MQTT end to end ---------------------------------------------------------------------
def topic(tenant: str, site: str, gateway: str) -> str:
    return f"ironwatch/{tenant}/{site}/{gateway}/readings"


def is_ready(server: Server) -> bool:
    with server.client() as client:
        return bool(client.get("/readyz").status_code == 200)


def batches_metric(server: Server, outcome: str) -> float:
    return metric(server, f'ironwatch_batches_total{{outcome="{outcome}",transport="mqtt"}}')


def query(server: Server, key: str, sql: str) -> list[list[Any]]:
    with server.client(key) as analyst:
        answer = analyst.post("/api/v1/query", json={"sql": sql})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["rows"])


class Gateway:
    """A paho publisher (QoS 1) that sends without waiting for each PUBACK, so messages come in runs."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-gateway-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(0)  # no limit: the broker gets them as fast as they go
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, what="the publisher to connect")
        self.sent: list[mqtt.MQTTMessageInfo] = []

    def send(self, where: str, payload: bytes) -> None:
        self.sent.append(self.client.publish(where, payload, qos=1))

    def wait_acknowledged(self, timeout_s: float = 60) -> None:
        """Wait for the broker's PUBACK of every message sent so far."""
        deadline = time.monotonic() + timeout_s
        for info in self.sent:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            assert info.is_published(), f"no PUBACK for message mid={info.mid}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def key_of(payload: bytes) -> Key:
    doc = orjson.loads(payload)
    return str(doc["gateway"]), int(doc["batch"])


def stream(n: int, readings: int, *, repeat_every: int, broken_every: int = 0) -> list[tuple[str, bytes]]:
    """``n`` batches of two gateways in three forms; every ``repeat_every``-th message is followed by
    an earlier batch sent again, every ``broken_every``-th by a message that is not JSON."""
    now_ms = int(time.time() * 1000)
    out: list[tuple[str, bytes]] = []
    for b in range(n):
        gateway, site = ("gw-1", "hall-a") if b % 2 == 0 else ("gw-2", "hall-b")
        form = "text" if b % 7 == 3 else ("readings" if b % 3 == 1 else "columns")
        doc = envelope(gateway, b, site=site, n=readings, form=form, now_ms=now_ms)
        out.append((topic("acme", site, gateway), orjson.dumps(doc)))
        if b % repeat_every == repeat_every - 1 and b >= 40:
            out.append(out[-40])  # a gateway that never saw its acknowledgement
        if broken_every and b % broken_every == broken_every // 2:
            out.append((topic("acme", site, gateway), f"not json, message {b}".encode()))
    return out


def mqtt_lab(lab: Lab) -> Tenant:
    acme = lab.tenant("acme", "analyst")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    lab.store.add_gateway("acme", "gw-2", "hall-b")
    return acme


def worker_groups(server: Server, path: str) -> float:
    return metric(server, f'ironwatch_ingest_worker_groups_total{{path="{path}"}}')


@pytest.mark.heavy
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "one-worker"])
def test_a_fast_stream_of_messages_is_admitted_in_groups_and_stored_once(
    lab: Lab, broker: Broker, workers: int
) -> None:
    """2,000 messages of 100 readings by default; IRONWATCH_HEAVY=1 sends 10,000."""
    mqtt_lab(lab)
    # Nothing leaves the log until the server stops, so the log shows how the messages were grouped.
    server = lab.server(
        "--mqtt-url",
        broker.url,
        IRONWATCH_LAKE__FLUSH_INTERVAL_S="3600",
        IRONWATCH_LAKE__SEGMENT_MAX_BYTES=str(1 << 30),
        IRONWATCH_LAKE__COMPACTION="false",
        IRONWATCH_INGEST__WORKERS=str(workers),
        IRONWATCH_MQTT__CLIENT_ID=SERVER_CLIENT_ID,
    )
    wait_until(lambda: is_ready(server), 20, what="the server to subscribe to the broker")
    n = 10_000 if HEAVY else 2_000
    messages = stream(n, 100, repeat_every=25, broken_every=250)
    broken = [p for _, p in messages if not p.startswith(b"{")]
    repeats = len(messages) - n - len(broken)
    assert repeats > 0 and broken
    gateway = Gateway(broker)
    try:
        for where, payload in messages:
            gateway.send(where, payload)
        gateway.wait_acknowledged()
    finally:
        gateway.close()

    def admitted() -> bool:
        return (
            batches_metric(server, "stored") == n
            and batches_metric(server, "duplicate") == repeats
            and metric(server, 'ironwatch_messages_quarantined_total{transport="mqtt"}') == len(broken)
        )

    wait_until(admitted, 60, interval_s=0.2, what=f"{n} batches, {repeats} duplicates, {len(broken)} broken")
    if workers:  # groups went to the worker (trimmed here when a repeat or a broken one was in them)
        assert worker_groups(server, "prepared") + worker_groups(server, "trimmed") > 0
        assert worker_groups(server, "unavailable") == 0
    else:
        assert worker_groups(server, "prepared") == 0

    logged = log_records(lab.data_dir / "wal")
    parts = Counter((p.gateway, p.batch) for r in logged for p in r.parts)
    assert parts == Counter({key_of(p): 1 for _, p in messages if p.startswith(b"{")})
    with_parts = [r for r in logged if r.parts]
    assert max(len(r.parts) for r in with_parts) > 1, "every message was admitted alone"
    assert any(len({p.gateway for p in r.parts}) == 2 for r in with_parts), "no group held both gateways"
    assert sum(r.good.num_rows for r in logged) == 100 * n
    assert sorted(r.quarantine["raw"][0].as_py() for r in logged if not r.parts) == sorted(
        p.decode() for p in broken
    )

    server.stop()  # graceful: acknowledges what is durable, writes the log to the lake
    assert server.log_path is not None
    assert "unacknowledged" not in server.log_path.read_text()
    # The broker took every PUBACK (those of a group leave together, in one write): it holds nothing
    # for the server's session, and never had to drop the connection.
    assert "lost the broker" not in server.log_path.read_text()
    checker = Gateway(broker)
    try:
        assert held_by_broker(broker, checker) == Counter()
    finally:
        checker.close()
    root = lake.open_root(str(lab.data_dir / "lake" / "acme"))
    stored = lake_rows(root, PER_BATCH_SQL)
    assert len(stored) == n
    assert {(g, b) for g, b, _, _ in stored} == set(parts)
    assert {(count, distinct) for _, _, count, distinct in stored} == {(100, 100)}
    assert lake_rows(root, "SELECT count(*) FROM quarantine") == [(len(broken),)]


SERVER_CLIENT_ID = "ironwatch-ingest-under-test"


def held_by_broker(broker: Broker, gateway: Gateway) -> Counter[Key]:
    """The messages the broker still keeps for the server's session: those it never acknowledged.

    Connects with the server's client id and without a clean start, so the broker sends this session
    what it holds, and acknowledges none of it; a barrier message published afterwards arrives after
    all of them. The session lives on for the server's restart.
    """
    got: list[bytes] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=SERVER_CLIENT_ID,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.on_message = lambda _c, _u, message: got.append(bytes(message.payload))
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600  # else the session, and what it holds, ends at disconnect
    properties.ReceiveMaximum = 65535
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        wait_until(client.is_connected, 10, what="the server's session to be taken over")
        barrier = orjson.dumps(envelope("gw-barrier", 1))
        gateway.send(topic("acme", "hall-a", "gw-barrier"), barrier)
        wait_until(lambda: barrier in got, 30, what="the barrier after the messages the broker holds")
    finally:
        client.disconnect()
        client.loop_stop()
    return Counter(key_of(p) for p in got if p != barrier)


@pytest.mark.heavy
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "one-worker"])
def test_kill_9_while_groups_are_admitted_keeps_every_acknowledged_batch_once(
    lab: Lab, broker: Broker, workers: int
) -> None:
    """6,000 messages of 10 readings by default; IRONWATCH_HEAVY=1 sends 20,000."""
    acme = mqtt_lab(lab)
    lab.store.add_gateway("acme", "gw-barrier", "hall-a")
    server = lab.server(
        "--mqtt-url",
        broker.url,
        IRONWATCH_MQTT__CLIENT_ID=SERVER_CLIENT_ID,
        IRONWATCH_INGEST__WORKERS=str(workers),
    )
    wait_until(lambda: is_ready(server), 20, what="the server to subscribe to the broker")
    assert server.proc is not None
    writer = lake_writer_of(server.proc.pid)
    worker_procs = [
        c
        for c in psutil.Process(server.proc.pid).children()
        if "ironwatch.ingest.workers" in " ".join(c.cmdline())
    ]
    assert len(worker_procs) == workers
    n = 20_000 if HEAVY else 6_000
    messages = stream(n, 10, repeat_every=40)
    sent = Counter(key_of(p) for _, p in messages)
    gateway = Gateway(broker)
    try:
        before_kill = messages[: len(messages) * 3 // 4]
        for where, payload in before_kill:
            gateway.send(where, payload)
        at_kill = wait_until(
            lambda: (s := batches_metric(server, "stored")) >= n // 4 and s,
            60,
            interval_s=0.02,
            what="a quarter of the batches to be stored",
        )
        if workers:  # groups went to the worker before the kill
            assert worker_groups(server, "prepared") + worker_groups(server, "trimmed") > 0
        server.kill()  # while the admitting thread is taking groups
        wait_until(lambda: gone(writer), 30, what="the killed server's lake writer to exit")
        for proc in worker_procs:  # they end with their input, as the lake writer does
            wait_until(lambda proc=proc: gone(proc), 30, what="the killed server's ingest worker to exit")
        for where, payload in messages[len(before_kill) :]:  # kept by the broker while the server is down
            gateway.send(where, payload)
        gateway.wait_acknowledged()

        held = held_by_broker(broker, gateway)
        acknowledged = {k for k, count in sent.items() if count > held[k]}
        root = lake.open_root(str(lab.data_dir / "lake" / "acme"))
        durable = {(p.gateway, p.batch) for r in log_records(lab.data_dir / "wal") for p in r.parts}
        durable |= set(lake_rows(root, "SELECT DISTINCT gateway, batch FROM readings"))
        assert acknowledged, "the server acknowledged nothing before it was killed"
        assert sum(held[key_of(p)] > 0 for _, p in before_kill) > 0, (
            f"every message was acknowledged before the kill ({at_kill} batches stored by then)"
        )
        lost = sorted(acknowledged - durable)
        assert not lost, f"{len(lost)} acknowledged batches were not durable at the kill: {lost[:10]}"

        server.start()
        expected = sorted([g, b, 10, 10] for g, b in [*sent, ("gw-barrier", 1)])

        def all_stored_once() -> bool:
            rows = query(server, acme.keys["analyst"], PER_BATCH_SQL)
            twice = [r for r in rows if r[2] != 10 or r[3] != 10]
            assert not twice, f"readings stored more than once: {twice[:10]}"
            return sorted(rows) == expected

        wait_until(all_stored_once, 60, interval_s=0.3, what=f"{len(expected)} batches stored once")
        # The restarted server got exactly what the broker held: durable batches (and second copies)
        # are answered as duplicates, the others stored, the barrier too.
        new = set(held) - durable
        answered = (len(new) + 1, sum(held.values()) - len(new))
        wait_until(
            lambda: (batches_metric(server, "stored"), batches_metric(server, "duplicate")) == answered,
            10,
            what=f"the restarted server to store {answered[0]} batches and find {answered[1]} duplicates",
        )
    finally:
        gateway.close()
