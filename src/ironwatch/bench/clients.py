"""Benchmark client processes: each encodes its share of the workload first, then sends it.

Encoding happens before the start signal, so the timed part is sending and the server's work. Each
client is one gateway with its own increasing batch numbers, one connection; over HTTP one batch in flight.
Over HTTP the acknowledgement is the server's answer (sent once the batch is fsynced); over MQTT it
is the broker's PUBACK, so the parent counts what the server stored through ``/metrics`` instead.
An MQTT client keeps up to 16 messages in flight, as a gateway does while its backlog drains.
"""

from __future__ import annotations

import dataclasses
import http.client
import time
import traceback
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from ironwatch.bench.workload import SITE, Workload, envelope
from ironwatch.model import gateway_topic


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """Everything a client process needs (picklable, for the spawn start method)."""

    client: int
    workload: Workload
    transport: str
    form: str
    url: str
    key: str
    tenant: str
    mqtt_url: str = ""


class HttpSender:
    """``POST /api/v1/ingest`` over one keep-alive connection; returns once the server answers 200."""

    def __init__(self, spec: ClientSpec) -> None:
        parts = urlsplit(spec.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {spec.key}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None
        self.latency_s: list[float] = []

    def open(self) -> None:
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        self.conn.connect()

    def send(self, body: bytes, count: int) -> None:
        assert self.conn is not None
        sent = time.perf_counter()
        self.conn.request("POST", "/api/v1/ingest", body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"ingest answered {response.status}: {data[:500]!r}")
        answer = orjson.loads(data)
        if answer.get("accepted") != count or answer.get("duplicate"):
            raise RuntimeError(f"ingest stored {answer.get('accepted')} of {count} readings: {data[:500]!r}")
        self.latency_s.append(time.perf_counter() - sent)

    def finish(self) -> None:
        """Every request was answered in :meth:`send`."""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class MqttSender:
    """QoS 1 publishes to ``ironwatch/{tenant}/{site}/{gateway}/readings``, ``WINDOW`` unacknowledged at once.

    Like the gateway's uplink it keeps several messages in flight instead of waiting for each
    PUBACK. paho runs in this thread (no network thread): ``publish`` writes at once and the loop is
    pumped only while the window is full, so a client costs little CPU of the machine under test.
    """

    WINDOW = 16

    def __init__(self, spec: ClientSpec) -> None:
        parts = urlsplit(spec.mqtt_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        gateway = spec.workload.gateway(spec.client)
        self.topic = gateway_topic(spec.tenant, SITE, gateway, "readings")
        self.client_id = f"bench-{gateway}-{time.monotonic_ns()}"
        self.mqtt: Any = None
        self._sent_at: dict[int, float] = {}
        self.latency_s: list[float] = []

    def open(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self.mqtt.max_inflight_messages_set(self.WINDOW)
        self.mqtt.max_queued_messages_set(0)
        self.mqtt.on_publish = self._on_publish
        self.mqtt.connect(self.host, self.port, keepalive=60)
        deadline = time.monotonic() + 30
        while not self.mqtt.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot connect to the broker at {self.host}:{self.port}")
            self.mqtt.loop(timeout=0.1)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        sent = self._sent_at.pop(mid, None)
        if sent is not None:
            self.latency_s.append(time.perf_counter() - sent)

    def _pump(self, until: int) -> None:
        """Run paho's loop until at most ``until`` messages wait for their PUBACK."""
        deadline = time.monotonic() + 120
        while len(self._sent_at) > until:
            if time.monotonic() > deadline:
                waiting = len(self._sent_at)
                raise RuntimeError(f"the broker did not acknowledge {waiting} messages within 120 s")
            rc = self.mqtt.loop(timeout=1.0)
            if rc != 0:
                raise RuntimeError(f"the connection to the broker failed: paho error {rc}")

    def send(self, body: bytes, count: int) -> None:
        self._pump(self.WINDOW - 1)
        sent = time.perf_counter()
        info = self.mqtt.publish(self.topic, body, qos=1)
        if info.rc != 0:
            raise RuntimeError(f"publish failed: paho error {info.rc}")
        if not info.is_published():  # the PUBACK may come back within publish itself
            self._sent_at[info.mid] = sent

    def finish(self) -> None:
        """Wait for every PUBACK."""
        self._pump(0)

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.disconnect()


def _sender(spec: ClientSpec) -> HttpSender | MqttSender:
    return MqttSender(spec) if spec.transport == "mqtt" else HttpSender(spec)


def client_main(spec: ClientSpec, go: Any, events: Any, encoded: Any, acked: Any) -> None:
    """Process entry: encode, connect, report ready, wait for ``go``, send everything, report."""
    sender = _sender(spec)
    try:
        wl, gateway = spec.workload, spec.workload.gateway(spec.client)
        bodies: list[bytes] = []
        counts: list[int] = []
        for number, (ts, sensor, metric, value) in enumerate(wl.batches(spec.client), start=1):
            bodies.append(envelope(gateway, number, spec.form, ts, sensor, metric, value))
            counts.append(len(ts))
            encoded[spec.client] += len(ts)
        sender.open()
        events.put({"client": spec.client, "event": "ready"})
        go.wait()
        t0, cpu0 = time.monotonic(), time.process_time()
        done = 0
        for body, count in zip(bodies, counts, strict=True):
            sender.send(body, count)
            done += count
            acked[spec.client] = done
        sender.finish()
        events.put(
            {
                "client": spec.client,
                "event": "done",
                "readings": done,
                "batches": len(bodies),
                "request_bytes": sum(len(b) for b in bodies),
                "t_start": t0,
                "t_end": time.monotonic(),
                "cpu_s": time.process_time() - cpu0,
                "latency_ms": (np.asarray(sender.latency_s) * 1e3).tolist(),
            }
        )
    except BaseException as exc:  # every failure goes to the parent, which fails the run loudly
        events.put(
            {"client": spec.client, "event": "failed", "error": repr(exc), "trace": traceback.format_exc()}
        )
    finally:
        sender.close()
