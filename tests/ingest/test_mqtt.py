"""MQTT ingest end to end: a real Mosquitto, the real ``ironwatch server``, a paho publisher.

Every test checks what ends up in SQL, so "stored exactly once" means counted through DuckDB over
the Parquet files the server wrote.
"""

from __future__ import annotations

import contextlib
import gzip
import select
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, Lab, Server, Tenant, wait_until
from ironwatch import config
from ironwatch.errors import ConfigError, MissingDependency
from ironwatch.ingest import Metrics, Pipeline
from ironwatch.ingest.mqtt import READ_AHEAD_BYTES, Subscriber, _Acks, _ReadAhead, topic_filters
from ironwatch.ingest.mqtt import Broker as BrokerAddress
from ironwatch.store import Store

READINGS_PER_BATCH = 10


class Publisher:
    """A gateway-like publisher: QoS 1, each publish waits for the broker's PUBACK."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-publisher-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, what="the publisher to connect")

    def publish(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        info = self.client.publish(topic, data, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"the broker did not acknowledge a message on {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def publisher(broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(broker)
    try:
        yield pub
    finally:
        pub.close()


def topic(tenant: str, site: str, gateway: str, kind: str = "readings") -> str:
    return f"ironwatch/{tenant}/{site}/{gateway}/{kind}"


def envelope(gateway: str, batch: int, *, site: str = "hall-a", columnar: bool = False) -> dict[str, Any]:
    """A batch of READINGS_PER_BATCH readings whose values say which batch they came from."""
    base_ms = int(time.time() * 1000) - 60_000
    ts = [base_ms + i for i in range(READINGS_PER_BATCH)]
    sensors = [f"s-{i:04d}" for i in range(READINGS_PER_BATCH)]
    values = [batch * 1000.0 + i for i in range(READINGS_PER_BATCH)]
    doc: dict[str, Any] = {"gateway": gateway, "batch": batch, "site": site, "sent_at": base_ms}
    if columnar:
        doc["columns"] = {"ts": ts, "sensor": sensors, "metric": ["temperature"] * len(ts), "value": values}
    else:
        doc["readings"] = [
            {"ts": t, "sensor": s, "metric": "temperature", "value": v}
            for t, s, v in zip(ts, sensors, values, strict=True)
        ]
    return doc


def query(server: Server, key: str, sql: str) -> list[list[Any]]:
    with server.client(key) as analyst:
        answer = analyst.post("/api/v1/query", json={"sql": sql})
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()["rows"]
    return rows


def stored_batches(server: Server, tenant: Tenant) -> list[list[Any]]:
    """``[gateway, batch, readings, distinct readings]`` per stored batch."""
    return query(
        server,
        tenant.keys["analyst"],
        "SELECT gateway, batch, count(*), count(DISTINCT (sensor, ts, value)) "
        "FROM readings GROUP BY gateway, batch ORDER BY gateway, batch",
    )


def wait_stored(
    server: Server, tenant: Tenant, expected: list[tuple[str, int]], timeout_s: float = 30
) -> None:
    """Wait until exactly the ``expected`` batches are in SQL, each with all its readings once."""
    want = [[g, b, READINGS_PER_BATCH, READINGS_PER_BATCH] for g, b in sorted(expected)]

    def done() -> bool:
        rows = stored_batches(server, tenant)
        assert all(r[2] == r[3] for r in rows), f"a reading was stored twice: {rows}"
        return rows == want

    try:
        wait_until(done, timeout_s, interval_s=0.2, what=f"{len(want)} batches in SQL")
    except AssertionError:
        raise AssertionError(f"expected {want}, stored {stored_batches(server, tenant)}") from None


def is_ready(server: Server) -> bool:
    with server.client() as client:
        return client.get("/readyz").status_code == 200


def mqtt_server(lab: Lab, broker: Broker) -> Server:
    server = lab.server("--mqtt-url", broker.url)
    wait_until(lambda: is_ready(server), 20, what="the server to subscribe to the broker")
    return server


def metric(server: Server, line_prefix: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_readings_are_stored_exactly_once(lab: Lab, broker: Broker) -> None:
    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    server = mqtt_server(lab, broker)
    # gw-2 is registered by its first HTTP contact, then switches to MQTT.
    with server.client(acme.keys["gateway"]) as gw:
        assert gw.post("/api/v1/ingest", json=envelope("gw-2", 1)).status_code == 200
    with publisher(broker) as pub:
        for batch in (1, 2, 3):
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 4, columnar=True))
        pub.publish(topic("acme", "hall-a", "gw-2"), envelope("gw-2", 2, columnar=True))
        pub.publish(topic("acme", "hall-a", "gw-1"), gzip.compress(orjson.dumps(envelope("gw-1", 5))))
        # Sent again (a gateway that never saw its ack): stored once.
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 2))
        pub.publish(topic("acme", "hall-a", "gw-2"), envelope("gw-2", 1))
        beat = {"gateway": "gw-1", "site": "hall-a", "ts": int(time.time() * 1000), "buffer_depth": 3}
        pub.publish(topic("acme", "hall-a", "gw-1", "heartbeat"), beat)
    expected = [("gw-1", b) for b in (1, 2, 3, 4, 5)] + [("gw-2", 1), ("gw-2", 2)]
    wait_stored(server, acme, expected)

    def heartbeat() -> dict[str, Any] | None:
        found = lab.store.gateway("acme", "gw-1")
        return found.last_heartbeat if found else None

    assert wait_until(heartbeat, what="the heartbeat")["buffer_depth"] == 3
    assert metric(server, 'ironwatch_batches_total{outcome="duplicate",transport="mqtt"}') == 2
    assert query(server, acme.keys["analyst"], "SELECT count(*) FROM quarantine") == [[0]]
    server.stop()  # a graceful stop with the subscriber running must not hang


def test_a_heartbeat_asking_for_an_answer_gets_one_on_its_own_answer_topic_only(
    lab: Lab, broker: Broker
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    lab.store.add_gateway("acme", "gw-2", "hall-a")
    server = mqtt_server(lab, broker)
    answers: list[tuple[str, bytes | None, Any]] = []
    with publisher(broker) as pub:
        pub.client.on_message = lambda _c, _u, m: answers.append(
            (m.topic, getattr(m.properties, "CorrelationData", None), orjson.loads(m.payload))
        )
        pub.client.subscribe("ironwatch/acme/hall-a/+/answer", qos=1)
        for batch in (1, 2):
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
        wait_stored(server, acme, [("gw-1", 1), ("gw-1", 2)])

        def ask(gateway: str, response_topic: str, token: bytes) -> None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            props.CorrelationData = token
            beat = {"gateway": gateway, "site": "hall-a", "ts": int(time.time() * 1000)}
            where = topic("acme", "hall-a", gateway, "heartbeat")
            info = pub.client.publish(where, orjson.dumps(beat), 1, properties=props)
            info.wait_for_publish(timeout=10)

        ask("gw-1", "ironwatch/acme/hall-a/gw-2/answer", b"foreign")  # another gateway's answer topic
        ask("gw-2", "ironwatch/acme/hall-a/gw-2/answer", b"none-yet")
        ask("gw-1", "ironwatch/acme/hall-a/gw-1/answer", b"mine")
        wait_until(lambda: len(answers) >= 2, 10, what="two answers")
        time.sleep(0.5)  # room for an answer that must not come
    assert answers == [
        ("ironwatch/acme/hall-a/gw-2/answer", b"none-yet", {"gateway": "gw-2", "last_batch_stored": None}),
        ("ironwatch/acme/hall-a/gw-1/answer", b"mine", {"gateway": "gw-1", "last_batch_stored": 2}),
    ]


def test_a_heartbeats_answer_counts_the_batches_queued_before_it(lab: Lab, broker: Broker) -> None:
    """A box died while the server was down; its last batches wait at the broker, then a new outbox
    asks which numbers the server holds. The answer must count those batches too."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    server = mqtt_server(lab, broker)  # subscribes once, so the broker keeps its session's messages
    server.stop()
    answers: list[Any] = []
    with publisher(broker) as pub:
        pub.client.on_message = lambda _c, _u, m: answers.append(orjson.loads(m.payload))
        pub.client.subscribe("ironwatch/acme/hall-a/gw-1/answer", qos=1)
        for batch in range(1, 301):
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch, columnar=True))
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "ironwatch/acme/hall-a/gw-1/answer"
        props.CorrelationData = b"new-outbox"
        beat = {"gateway": "gw-1", "site": "hall-a", "ts": int(time.time() * 1000)}
        where = topic("acme", "hall-a", "gw-1", "heartbeat")
        pub.client.publish(where, orjson.dumps(beat), 1, properties=props).wait_for_publish(timeout=10)
        server.start()
        wait_until(lambda: answers, 30, what="the answer")
    assert answers == [{"gateway": "gw-1", "last_batch_stored": 300}]
    wait_stored(server, acme, [("gw-1", b) for b in range(1, 301)])


def test_broken_messages_are_quarantined_and_the_subscriber_keeps_going(lab: Lab, broker: Broker) -> None:
    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    lab.store.add_gateway("acme", "gw-2", "hall-a")
    server = mqtt_server(lab, broker)
    broken = [
        (topic("acme", "hall-a", "gw-1"), b"this is not json", "malformed: body: not valid JSON"),
        (topic("acme", "hall-a", "gw-1"), envelope("gw-2", 1), "gateway: the message names another gateway"),
        (topic("acme", "hall-b", "gw-1"), envelope("gw-1", 1), "site: the message names another site"),
        (topic("acme", "hall-b", "gw-1"), envelope("gw-1", 1, site="hall-b"), "registered to site hall-a"),
        (topic("acme", "hall-a", "gw-9"), envelope("gw-9", 1), "gateway gw-9 is not registered"),
        (topic("acme", "hall a", "gw-1"), envelope("gw-1", 1), "invalid: topic site: 'hall a'"),
        (topic("acme", "hall-a", "gw-1"), b"\x1f\x8bnot gzip", "malformed"),
        (topic("acme", "hall-a", "gw-1", "heartbeat"), b"[1, 2]", "invalid: body: expected a JSON object"),
        (topic("acme", "hall-a", "gw-1", "heartbeat"), {"gateway": "gw-1", "site": "hall-a"}, "invalid: ts"),
    ]
    with publisher(broker) as pub:
        for where, payload, _ in broken:
            pub.publish(where, payload)
            # A tenant that does not exist has no root to keep anything in: logged and counted.
            pub.publish(topic("nobody", "hall-a", "gw-1"), envelope("gw-1", 1))
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 1))
    wait_stored(server, acme, [("gw-1", 1)])

    def quarantined() -> list[list[Any]]:
        rows = query(server, acme.keys["analyst"], "SELECT field, reason, raw, transport FROM quarantine")
        return rows if len(rows) >= len(broken) else []

    rows = wait_until(quarantined, what="the broken messages in quarantine")
    assert len(rows) == len(broken), rows
    by_topic: dict[str, list[str]] = {}
    for field, reason, raw, transport in rows:
        assert transport == "mqtt"
        assert raw, "the raw message is kept"
        by_topic.setdefault(field, []).append(reason)
    for where, _, reason in broken:
        reasons = by_topic[f"topic:{where}"]
        assert any(reason in r for r in reasons), f"{reason!r} not in {reasons}"
    assert metric(server, 'ironwatch_mqtt_messages_dropped_total{reason="unknown_tenant"}') == len(broken)
    assert is_ready(server)


def test_subscriber_survives_a_broker_restart(lab: Lab, broker: Broker) -> None:
    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    server = mqtt_server(lab, broker)
    with publisher(broker) as pub:
        for batch in range(1, 6):
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
    wait_stored(server, acme, [("gw-1", b) for b in range(1, 6)])
    with publisher(broker) as pub:
        for batch in range(6, 11):  # not waited for: may still be at the broker when it stops
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
    broker.stop()
    wait_until(lambda: not is_ready(server), 10, what="the server to notice the broker is gone")
    broker.start()
    # Mosquitto 2.0 restores the session but not its shared subscription: until the subscriber is
    # back and has subscribed again, the broker answers publishers "no matching subscribers".
    wait_until(lambda: is_ready(server), 30, what="the subscriber to reconnect")
    with publisher(broker) as pub:
        for batch in range(11, 21):
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
    wait_stored(server, acme, [("gw-1", b) for b in range(1, 21)])


def test_a_message_the_log_could_not_take_is_delivered_again(lab: Lab, broker: Broker) -> None:
    """The log's folder away for a moment: the message it refused is not stuck at the broker."""
    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    # A segment per record, so that the next segment is opened, and fails, right after each one.
    server = lab.server("--mqtt-url", broker.url, IRONWATCH_LAKE__SEGMENT_MAX_BYTES="1")
    wait_until(lambda: is_ready(server), 20, what="the server to subscribe to the broker")
    wal, away = lab.data_dir / "wal", lab.data_dir / "wal-away"
    assert server.log_path is not None
    with publisher(broker) as pub:
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 1))
        wait_until(lambda: metric(server, 'ironwatch_readings_accepted_total{transport="mqtt"}') == 10, 10)
        wal.rename(away)
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 2))  # in the open segment
        wait_until(lambda: not is_ready(server), 10, what="/readyz to see the log is not open")
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 3))  # refused by the log
        wait_until(lambda: "is not durable" in server.log_path.read_text(), 10, what="batch 3 refused")
        away.rename(wal)
    wait_stored(server, acme, [("gw-1", b) for b in (1, 2, 3)], timeout_s=40)
    assert "reconnecting to" in server.log_path.read_text()  # how batch 3 came again
    assert is_ready(server)


@pytest.mark.parametrize("halt", ["kill", "stop"])
def test_messages_sent_while_the_server_is_down_are_stored_once(lab: Lab, broker: Broker, halt: str) -> None:
    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    lab.store.add_gateway("acme", "gw-2", "hall-b")
    server = mqtt_server(lab, broker)
    with publisher(broker) as pub:
        # Halted while these stream in: some are durable but not yet acknowledged, and come again.
        for batch in range(1, 21):
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
        if halt == "kill":
            server.kill()
        else:
            server.stop()
        for batch in range(21, 41):  # queued at the broker while the server is down
            pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", batch))
            pub.publish(
                topic("acme", "hall-b", "gw-2"), envelope("gw-2", batch, site="hall-b", columnar=True)
            )
    server.start()
    wait_stored(server, acme, [("gw-1", b) for b in range(1, 41)] + [("gw-2", b) for b in range(21, 41)])
    wait_until(lambda: is_ready(server), 10, what="the subscriber to be back")


def test_server_starts_before_the_broker(lab: Lab, broker: Broker) -> None:
    acme = lab.tenant("acme")
    lab.store.add_gateway("acme", "gw-1", "hall-a")
    broker.stop()
    server = lab.server("--mqtt-url", broker.url)
    with server.client() as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "not connected to the MQTT broker" in answer.json()["problems"]
    broker.start()
    wait_until(lambda: is_ready(server), 40, what="the subscriber to connect")
    with publisher(broker) as pub:
        pub.publish(topic("acme", "hall-a", "gw-1"), envelope("gw-1", 1))
    wait_stored(server, acme, [("gw-1", 1)])


def test_acks_leave_in_arrival_order() -> None:
    sent: list[int] = []
    acks = _Acks(sent.extend)
    first, second, third = acks.expect(1), acks.expect(2), acks.expect(3)
    acks.settle(third, ack=True)
    acks.settle(second, ack=False)  # left for the broker to deliver again
    assert sent == []
    acks.settle(first, ack=True)
    assert sent == [1, 3]
    stale = acks.expect(4)
    acks.reset()  # a new connection: packet id 4 of the old one means nothing now
    acks.settle(stale, ack=True)
    assert sent == [1, 3]
    assert acks.wait_idle(0)


def test_acks_settled_together_leave_in_one_send() -> None:
    sent: list[list[int]] = []
    acks = _Acks(sent.append)
    first, second, third, fourth = (acks.expect(mid) for mid in (1, 2, 3, 4))
    acks.settle_many([(second, True), (third, False)])
    assert sent == []  # the first is still pending: nothing may go before it
    acks.settle_many([(fourth, True), (first, True), (None, True)])  # None: a QoS 0 message
    assert sent == [[1, 2, 4]]
    assert acks.wait_idle(0)


def test_read_ahead_serves_small_reads_from_one_large_one() -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        sock = _ReadAhead(ours)
        assert sock.fileno() == ours.fileno()  # everything but reading is the socket's own
        theirs.sendall(b"\x30\x05hello" + b"\x40\x02\x00\x01")
        wait_until(lambda: select.select([ours], [], [], 0)[0], 5, what="the bytes to arrive")
        assert sock.recv(1) == b"\x30"  # one read of the socket takes everything waiting
        assert sock.pending() == 10
        assert select.select([ours], [], [], 0)[0] == []  # so paho must ask pending(), not select
        assert [sock.recv(1), sock.recv(5), sock.recv(100)] == [b"\x05", b"hello", b"\x40\x02\x00\x01"]
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        big = bytes(range(256)) * (READ_AHEAD_BYTES // 128)  # more than one read takes
        theirs.setblocking(False)
        sent = theirs.send(big)
        got = b""
        while len(got) < sent:
            with contextlib.suppress(BlockingIOError):
                got += sock.recv(3000)
        assert got == big[:sent]
        theirs.close()
        wait_until(lambda: select.select([ours], [], [], 0)[0], 5, what="the end of the stream")
        assert sock.recv(1) == b""  # the end of the stream, as paho expects it
    finally:
        ours.close()
        theirs.close()


def test_the_subscriber_reads_its_socket_ahead(lab: Lab, broker: Broker) -> None:
    """paho builds its socket in a private method; if a new paho renames it, this test says so."""
    settings = config.load({"server.data_dir": str(lab.data_dir), "mqtt.url": broker.url}, env={})
    store = Store(settings.store_url)
    subscriber = Subscriber(settings, Pipeline(settings, store, Metrics()))
    try:
        subscriber.start()
        wait_until(lambda: subscriber.is_connected, 10, what="the subscriber to connect")
        assert isinstance(subscriber._client.socket(), _ReadAhead)  # type: ignore[union-attr]
    finally:
        subscriber.stop()
        store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884, False)),
        ("mqtt://broker.local", ("broker.local", 1883, False)),
        ("mqtts://broker.local", ("broker.local", 8883, True)),
    ],
)
def test_broker_urls(url: str, expected: tuple[str, int, bool]) -> None:
    address = BrokerAddress.from_url(url)
    assert (address.host, address.port, address.is_tls) == expected


@pytest.mark.parametrize("url", ["http://host:1883", "mqtt://:1883", "mqtt://host:99999", "mqtt://u:p@host"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.url"):
        BrokerAddress.from_url(url)


def test_topic_filters_follow_the_share_group() -> None:
    settings = config.load({"mqtt.share_group": "line-2"}, env={})
    assert topic_filters(settings.mqtt.share_group) == [
        "$share/line-2/ironwatch/+/+/+/readings",
        "$share/line-2/ironwatch/+/+/+/heartbeat",
    ]


def test_missing_paho_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = config.load({"server.data_dir": str(tmp_path), "mqtt.url": "mqtt://127.0.0.1:1"}, env={})
    store = Store(settings.store_url)
    try:
        subscriber = Subscriber(settings, Pipeline(settings, store, Metrics()))
        monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)  # what Python does when it is absent
        with pytest.raises(MissingDependency, match=r"pip install 'ironwatch\[mqtt\]'"):
            subscriber.start()
    finally:
        store.close()


def test_a_subscriber_starts_once(tmp_path: Path) -> None:
    settings = config.load({"server.data_dir": str(tmp_path), "mqtt.url": "mqtt://127.0.0.1:1"}, env={})
    store = Store(settings.store_url)
    try:
        subscriber = Subscriber(settings, Pipeline(settings, store, Metrics()))
        subscriber.start()  # connects in the background: nothing listens on port 1, it keeps trying
        with pytest.raises(RuntimeError, match="already been started"):
            subscriber.start()
        subscriber.stop()
        with pytest.raises(RuntimeError, match="build a new one"):
            subscriber.start()
    finally:
        store.close()
