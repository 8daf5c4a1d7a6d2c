"""Benchmark client processes: each encodes its share of the workload first, then sends it.

Encoding happens before the start signal, so the timed part is sending and the server's work. Each
client is one gateway with its own increasing batch numbers, one connection and one batch in flight.
Over HTTP the acknowledgement is the server's answer (sent once the batch is fsynced); over MQTT it
is the broker's PUBACK, so the parent counts what the server stored through ``/metrics`` instead.
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

    def open(self) -> None:
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        self.conn.connect()

    def send(self, body: bytes, count: int) -> None:
        assert self.conn is not None
        self.conn.request("POST", "/api/v1/ingest", body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"ingest answered {response.status}: {data[:500]!r}")
        answer = orjson.loads(data)
        if answer.get("accepted") != count or answer.get("duplicate"):
            raise RuntimeError(f"ingest stored {answer.get('accepted')} of {count} readings: {data[:500]!r}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class MqttSender:
    """QoS 1 publishes to ``ironwatch/{tenant}/{site}/{gateway}/readings``; returns on the broker's PUBACK."""

    def __init__(self, spec: ClientSpec) -> None:
        parts = urlsplit(spec.mqtt_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        gateway = spec.workload.gateway(spec.client)
        self.topic = f"ironwatch/{spec.tenant}/{SITE}/{gateway}/readings"
        self.client_id = f"bench-{gateway}-{time.monotonic_ns()}"
        self.mqtt: Any = None

    def open(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self.mqtt.max_queued_messages_set(0)
        self.mqtt.connect(self.host, self.port, keepalive=60)
        self.mqtt.loop_start()

    def send(self, body: bytes, count: int) -> None:
        info = self.mqtt.publish(self.topic, body, qos=1)
        info.wait_for_publish(timeout=120)
        if not info.is_published():
            raise RuntimeError(f"the broker did not acknowledge message {info.mid} within 120 s")

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.loop_stop()
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
        latency_s = np.empty(len(bodies))
        done = 0
        for i, (body, count) in enumerate(zip(bodies, counts, strict=True)):
            t = time.perf_counter()
            sender.send(body, count)
            latency_s[i] = time.perf_counter() - t
            done += count
            acked[spec.client] = done
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
                "latency_ms": (latency_s * 1e3).tolist(),
            }
        )
    except BaseException as exc:  # every failure goes to the parent, which fails the run loudly
        events.put(
            {"client": spec.client, "event": "failed", "error": repr(exc), "trace": traceback.format_exc()}
        )
    finally:
        sender.close()
