"""MQTT uplink: batch envelopes published with QoS 1 to ``ironwatch/{tenant}/{site}/{gateway}/readings``.

A batch counts as delivered only on a PUBACK whose reason code says a subscriber took it. The
server's subscriber acknowledges only once a batch is durable, but a broker answers by itself when
nobody is subscribed: MQTT v5 says so with reason code 16 ("no matching subscribers"), which this
uplink treats as *not delivered* (MQTT 3.1.1 cannot tell, which is why the gateway speaks v5). That
happens for a moment after a broker restart, before the server's shared subscription is back.

The session is persistent (clean start off, a session expiry), and messages are republished from
the outbox after any reconnection, so a message lost with a connection is sent again; the server
answers a batch it already holds as a duplicate.

A heartbeat can ask the server for an answer the MQTT v5 way (a Response Topic and Correlation
Data): the server publishes it to ``ironwatch/{tenant}/{site}/{gateway}/answer``, which this uplink
subscribes to. A new outbox learns that way which batch numbers the server already holds.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ironwatch.errors import MissingDependency
from ironwatch.gateway.config import GatewayConfig
from ironwatch.gateway.outbox import Batch
from ironwatch.gateway.uplink import LinkDown, NoAnswer, Result, last_batch_stored
from ironwatch.model import gateway_topic

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

SESSION_EXPIRY_S = 24 * 3600
KEEPALIVE_S = 30
_NO_MATCHING_SUBSCRIBERS = 16
#: PUBACK reason codes that condemn the message itself (packet too large, payload format invalid):
#: sending it again cannot help, so the batch is dead-lettered like an HTTP 413.
REFUSING_CODES = frozenset({149, 153})
#: Bytes of a QoS 1 PUBLISH besides the topic and the payload, at most: the fixed header (5), the
#: topic's length (2), the packet id (2) and the properties' length (4).
_PUBLISH_OVERHEAD = 13
_EARLY_MAX_AGE_S = 2.0


class MqttUplink:
    """Publishes through a broker; the connection is kept up by paho's network thread."""

    def __init__(self, config: GatewayConfig, *, is_probe: bool = False) -> None:
        try:
            import paho.mqtt.client

            mqtt: Any = paho.mqtt.client
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
        except ImportError as exc:
            raise MissingDependency("paho-mqtt", "mqtt") from exc
        up = config.uplink
        parts = urlsplit(up.url)
        self._is_tls = parts.scheme == "mqtts"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if self._is_tls else 1883)
        self.target = f"{parts.scheme}://{self._host}:{self._port}"
        self._timeout_s = up.timeout_s
        tenant = str(up.tenant)  # the config refuses an MQTT uplink without one
        self._readings_topic, self._heartbeat_topic, self._answer_topic = (
            gateway_topic(tenant, config.site, config.gateway, kind)
            for kind in ("readings", "heartbeat", "answer")
        )
        #: The correlation data of heartbeats still waiting for an answer, and the first answer.
        self._tokens: set[bytes] = set()
        self._answer: Any = None
        self._answered = threading.Event()
        self._properties, self._packet_types = Properties, PacketTypes
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[int]] = {}
        # PUBACKs that came before their message was registered, with when they came. Only a
        # moment's old one counts: an old one is for a message of an earlier connection whose
        # number (paho counts to 65535 and wraps) is used again now.
        self._early: dict[int, tuple[int, float]] = {}
        self._last_error = "not connected yet"
        #: The broker's Maximum Packet Size (from its CONNACK), if it has one.
        self._max_packet_bytes: int | None = None
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            # A probe under the gateway's own id would take over the running gateway's connection.
            client_id=f"ironwatch-gateway-{config.gateway}" + ("-check" if is_probe else ""),
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(max(20, up.in_flight * 4))
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=int(max(1, up.backoff_max_s)))
        if up.username:
            client.username_pw_set(up.username, up.password)
        if self._is_tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if is_probe else SESSION_EXPIRY_S
        client.connect_async(self._host, self._port, KEEPALIVE_S, clean_start=is_probe, properties=props)
        client.loop_start()
        self._client = client
        self._mqtt = mqtt

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            self._last_error = f"the broker refused the connection: {rc}"
            return
        # Sent before any heartbeat of this connection, so the broker holds it when an answer comes.
        client.subscribe(self._answer_topic, qos=1)
        limit = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self._max_packet_bytes = int(limit) if limit else None
        self._connected.set()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        if correlation is None:
            return
        try:
            doc = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            doc = bytes(message.payload[:200]).decode("utf-8", "replace")
        with self._lock:
            if bytes(correlation) in self._tokens and self._answer is None:
                self._answer = doc
                self._answered.set()

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._connected.clear()
        self._last_error = f"disconnected: {rc}"
        # Whatever was in flight is not known to be delivered: fail it now, the outbox resends it.
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            self._early.clear()
        for future in waiting.values():
            if not future.done():
                future.set_exception(LinkDown(f"{self.target}: {self._last_error}"))

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties | None
    ) -> None:
        with self._lock:
            future = self._waiting.pop(mid, None)
            if future is None:  # the PUBACK came before ``_publish`` could register the message
                self._early[mid] = (int(rc.value), time.monotonic())
        if future is not None and not future.done():
            future.set_result(int(rc.value))

    def _publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> Future[int]:
        future: Future[int] = Future()
        if not self._connected.wait(self._timeout_s):
            future.set_exception(LinkDown(f"{self.target}: {self._last_error}"))
            return future
        # Never hold our lock while paho works: its network thread calls ``_on_publish`` (which
        # takes our lock) while it holds paho's own lock, which ``publish`` needs too.
        info = self._client.publish(topic, payload, qos=1, properties=properties)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            future.set_exception(LinkDown(f"{self.target}: {self._mqtt.error_string(info.rc)}"))
            return future
        now = time.monotonic()
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is not None and now - early[1] > _EARLY_MAX_AGE_S:
                early = None
            if early is None:
                self._waiting[info.mid] = future
            if len(self._early) > 100:
                self._early = {m: e for m, e in self._early.items() if now - e[1] <= _EARLY_MAX_AGE_S}
        if early is not None:
            future.set_result(early[0])
        return future

    def _result(self, batch: Batch, future: Future[int], deadline: float) -> Result:
        try:
            code = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except LinkDown as exc:
            return Result(batch, "failed", reason=exc.message)
        except TimeoutError:
            return Result(batch, "failed", reason=f"{self.target}: no PUBACK within {self._timeout_s:g} s")
        if code == _NO_MATCHING_SUBSCRIBERS:
            return Result(batch, "failed", reason=f"{self.target}: no server is subscribed (reason code 16)")
        if code in REFUSING_CODES:
            reason = f"{self.target} refused the message for good (reason code {code})"
            return Result(batch, "refused", answer=_refusal("refused", reason), reason=reason)
        if code >= 128:
            return Result(batch, "failed", reason=f"{self.target}: the broker refused the message ({code})")
        return Result(batch, "delivered")

    def send(self, batches: Sequence[Batch]) -> list[Result]:
        """Publish every batch, then wait for their PUBACKs. A batch larger than the broker's
        Maximum Packet Size is refused without being sent: the broker would drop the connection."""
        limit = self._max_packet_bytes
        topic_bytes = len(self._readings_topic.encode())
        results: list[Result | Future[int]] = []
        for b in batches:
            size = len(b.payload) + topic_bytes + _PUBLISH_OVERHEAD
            if limit is not None and size > limit:
                reason = f"{self.target} takes packets of at most {limit} bytes; this batch's is {size}"
                results.append(Result(b, "refused", answer=_refusal("too_large", reason), reason=reason))
            else:
                results.append(self._publish(self._readings_topic, b.payload))
        deadline = time.monotonic() + self._timeout_s
        return [
            r if isinstance(r, Result) else self._result(b, r, deadline)
            for b, r in zip(batches, results, strict=True)
        ]

    def heartbeat(self, doc: dict[str, Any], properties: Properties | None = None) -> None:
        """Publish one heartbeat and wait for its PUBACK."""
        future = self._publish(self._heartbeat_topic, orjson.dumps(doc), properties)
        try:
            code = future.result(timeout=self._timeout_s)
        except TimeoutError:
            raise LinkDown(f"{self.target}: no PUBACK for the heartbeat") from None
        if code == _NO_MATCHING_SUBSCRIBERS or code >= 128:
            raise LinkDown(f"{self.target}: the heartbeat was not taken (reason code {code})")

    def last_batch_stored(self, heartbeat: dict[str, Any]) -> int | None:
        """Publish a heartbeat asking for an answer (MQTT v5 Response Topic and Correlation Data)
        and wait for the server's answer on the gateway's answer topic. A late answer to an earlier
        heartbeat of this uplink counts as well (nothing was sent in between)."""
        token = os.urandom(16)
        with self._lock:
            self._tokens.add(token)
            answer = self._answer
        if answer is None:
            props = self._properties(self._packet_types.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self._answer_topic
            props.CorrelationData = token
            self.heartbeat(heartbeat, props)
            if not self._answered.wait(self._timeout_s):
                raise NoAnswer(
                    f"{self.target}: no answer to the heartbeat on {self._answer_topic} within "
                    f"{self._timeout_s:g} s (the server may be down; the broker's access rules must let "
                    "the gateway subscribe to that topic, and the server publish there)",
                    is_final=False,
                )
            with self._lock:
                answer = self._answer
        with self._lock:
            self._tokens.clear()
            self._answer = None
            self._answered.clear()
        return last_batch_stored(answer, self.target)

    def check(self, heartbeat: dict[str, Any]) -> None:
        """Connect and publish one heartbeat that a server must take and answer: the answer is how
        a new outbox learns its first batch number, so a broker that drops it is found here."""
        if not self._connected.wait(self._timeout_s):
            raise LinkDown(f"cannot reach the broker {self.target}: {self._last_error}")
        self.last_batch_stored(heartbeat)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()


def _refusal(code: str, message: str) -> dict[str, Any]:
    """A refusal in the server's error shape, for the dead-letter file."""
    return {"error": {"code": code, "message": message, "details": {}}}
