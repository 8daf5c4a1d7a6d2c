"""The MQTT front door: a subscriber that feeds what gateways publish into the ingest pipeline.

Gateways publish batch envelopes to ``ironwatch/{tenant}/{site}/{gateway}/readings`` and heartbeats
to ``.../heartbeat``. The server subscribes with QoS 1 through a shared subscription, so several
ingest workers (each with its own client id) split one stream.

Durability works like HTTP's "acknowledged means durable": the client acknowledges nothing by
itself (paho's ``manual_ack``); a PUBACK goes out only once the batch, or the quarantine row of a
broken message, is fsynced in the write-ahead log. The session is persistent (MQTT v5, clean start
off, a session expiry), so the broker keeps every unacknowledged or newly published message while
the server is down or reconnecting, and delivers it again; a batch delivered twice is answered as a
duplicate by the ledger. PUBACKs are sent in the order the messages arrived, as MQTT asks.

A broker sends an unacknowledged message again only on a new connection, and each one holds a slot
of the receive maximum meanwhile. So when a message is left unacknowledged (the log could not take
it: a full disk, no file descriptor left), the subscriber reconnects a little later
(:data:`REDELIVER_MIN_S`, doubling up to :data:`REDELIVER_MAX_S` while it keeps happening) and the
broker delivers it again, instead of the stream stalling on a connection that looks healthy.

Readings are admitted in groups: the network thread only checks a message's topic and queues it,
and an admitting thread takes every message queued meanwhile (up to :data:`GROUP_MAX_MESSAGES` or
:data:`GROUP_MAX_BYTES`) into one pass of the pipeline, so a stream of small messages costs one
log record and one fsync per group, not per message. A lone message is admitted at once.

The topic is the only identity a message has, so the broker's access rules must allow a gateway
to publish only under its own tenant, site and gateway. A heartbeat that names a Response Topic
(MQTT v5 request/response) is answered there, as HTTP answers it, with the highest batch number of
the gateway the server holds or has begun to write; only the gateway's own ``.../answer`` topic is served.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import logging
import math
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ironwatch.config import Settings
from ironwatch.errors import (
    ConfigError,
    InvalidInput,
    IronwatchError,
    MissingDependency,
    NotFound,
    Unavailable,
)
from ironwatch.ingest.decode import gunzip, parse_json
from ironwatch.ingest.heartbeat import parse_heartbeat
from ironwatch.ingest.pipeline import Pipeline
from ironwatch.model import Principal, Role, gateway_topic, is_id

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

TRANSPORT = "mqtt"
KINDS = ("readings", "heartbeat")
#: How long the broker keeps the session (subscriptions and queued messages) while the server is down.
SESSION_EXPIRY_S = 7 * 24 * 3600
#: Most unacknowledged messages the broker may have in flight towards this client.
RECEIVE_MAXIMUM = 1000
KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: Most bytes read from the broker's socket at once (see :class:`_ReadAhead`).
READ_AHEAD_BYTES = 256 << 10
#: Most packets read from that buffer in one turn of paho's loop.
READ_AHEAD_PACKETS = 64
#: How long ``stop`` waits for the acknowledgements of messages already being written.
STOP_DRAIN_S = 10.0
#: How soon after a message was left unacknowledged the subscriber reconnects to have it sent again;
#: the wait doubles, up to REDELIVER_MAX_S, while messages keep being left.
REDELIVER_MIN_S = 2.0
REDELIVER_MAX_S = 60.0
#: Most messages, and most payload bytes, admitted together as one group. Arrow's JSON reader costs
#: 150-400 us a call before it reads anything: a group of 2 MiB pays that for 250 messages of 8 KB.
GROUP_MAX_MESSAGES = 512
GROUP_MAX_BYTES = 2048 << 10
#: Most payload bytes waiting for the admitting thread. Past it the network thread waits, so the
#: broker's messages wait in the socket and at the broker (which does not always keep to the
#: receive maximum), not in the server's memory.
INBOX_MAX_BYTES = 4 << 20
#: Most topics whose check is remembered (a site's gateways have two each); past it, all are forgotten.
TOPICS_KEPT = 10_000
_GZIP_MAGIC = b"\x1f\x8b"
#: A PUBACK without a reason code or properties (success, as MQTT v5 allows): type, length, packet id.
_PUBACK = struct.Struct("!BBH")
_PUBACK_HEAD = 0x40


@dataclasses.dataclass(frozen=True)
class Broker:
    """Where the broker listens, from a URL such as ``mqtt://127.0.0.1:1883`` or ``mqtts://host``."""

    host: str
    port: int
    is_tls: bool

    @classmethod
    def from_url(cls, url: str) -> Broker:
        """Parse ``mqtt://HOST[:PORT]`` (default port 1883) or ``mqtts://HOST[:PORT]`` (TLS, 8883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError("mqtt.url", f"{url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError("mqtt.url", f"{url!r}: {exc}") from exc
        if not parts.hostname:
            raise ConfigError("mqtt.url", f"{url!r}: no host")
        if parts.username or parts.password:
            raise ConfigError("mqtt.url", "put the user name and password in mqtt.username and mqtt.password")
        is_tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if is_tls else 1883), is_tls)


def topic_filters(share_group: str) -> list[str]:
    """The shared-subscription filters the server subscribes to."""
    return [f"$share/{share_group}/{gateway_topic('+', '+', '+', kind)}" for kind in KINDS]


class _State(enum.Enum):
    PENDING = "pending"
    ACK = "ack"
    #: Not acknowledged: the broker delivers the message again on the next connection.
    LEAVE = "leave"


@dataclasses.dataclass
class _Delivery:
    mid: int
    generation: int
    state: _State = _State.PENDING


@dataclasses.dataclass(frozen=True)
class _Queued:
    """A readings message whose topic checked out, waiting for the admitting thread; or, with
    ``answer``, a heartbeat's answer, sent once every message queued before it has been admitted."""

    delivery: _Delivery | None
    principal: Principal
    topic: str
    #: The message as JSON (a gzipped message is kept unzipped, so quarantine shows it readable).
    body: bytes
    answer: Callable[[], None] | None = None


class _Acks:
    """Sends PUBACKs in the order the messages arrived, each once its message is settled.

    The PUBACKs a settlement lets go leave together (``send`` gets their packet ids in order), so
    a group of messages made durable by one fsync costs one write to the broker, not one per message.

    Packet ids belong to one connection: after a reconnect the broker delivers unacknowledged
    messages again, so settlements from an earlier connection are dropped instead of acknowledging
    a packet id the broker may have reused.
    """

    def __init__(self, send: Callable[[list[int]], None], on_left: Callable[[], None] | None = None) -> None:
        self._send = send
        self._on_left = on_left
        self._cond = threading.Condition()
        self._queue: deque[_Delivery] = deque()
        self._generation = 0

    def reset(self) -> None:
        """Forget the deliveries of the previous connection."""
        with self._cond:
            self._generation += 1
            self._queue.clear()
            self._cond.notify_all()

    def expect(self, mid: int) -> _Delivery:
        """Register a QoS 1 message that must be acknowledged in its turn."""
        with self._cond:
            delivery = _Delivery(mid, self._generation)
            self._queue.append(delivery)
            return delivery

    def settle(self, delivery: _Delivery | None, *, ack: bool) -> None:
        """Mark a delivery done; send every PUBACK that is now at the head of the line."""
        self.settle_many([(delivery, ack)])

    def settle_many(self, settled: Sequence[tuple[_Delivery | None, bool]]) -> None:
        """Mark deliveries done (``(delivery, ack)``); send the PUBACKs now at the head of the line."""
        left = False
        with self._cond:
            for delivery, ack in settled:
                if delivery is None:  # QoS 0: nothing to acknowledge
                    continue
                if delivery.generation != self._generation or delivery.state is not _State.PENDING:
                    continue
                delivery.state = _State.ACK if ack else _State.LEAVE
                left = left or not ack
            mids = []
            while self._queue and self._queue[0].state is not _State.PENDING:
                head = self._queue.popleft()
                if head.state is _State.ACK:
                    mids.append(head.mid)
            if mids:
                self._send(mids)  # under the lock, so PUBACKs leave in order
            if not self._queue:
                self._cond.notify_all()
        if left and self._on_left is not None:
            self._on_left()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every delivery of this connection is settled."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout_s)


class _GroupAnswers:
    """Collects the pipeline's answers for the messages of one admitted group and settles them
    together once all are in, so their PUBACKs leave in one write.

    The answers come on the log's thread once the group's record is durable, or earlier (a
    duplicate is answered while the group is admitted); how many to wait for is known only once
    the pipeline has said which messages it refused (:meth:`expect`).
    """

    def __init__(self, group: list[_Queued], acks: _Acks) -> None:
        self._group = group
        self._acks = acks
        self._lock = threading.Lock()
        self._settled: list[tuple[_Delivery | None, bool]] = []
        self._expected: int | None = None

    def answer(self, i: int, outcome: object) -> None:
        queued = self._group[i]
        try:
            failed = isinstance(outcome, BaseException)
            if failed:
                log.error(
                    "MQTT: message on %s is not durable (%s); left unacknowledged", queued.topic, outcome
                )
            with self._lock:
                self._settled.append((queued.delivery, not failed))
                ready = self._take_if_complete()
            if ready:
                self._acks.settle_many(ready)
        except Exception:
            log.exception("MQTT: error while acknowledging a message on %s", queued.topic)

    def expect(self, count: int) -> None:
        """The number of answers the pipeline gives (its admitted messages)."""
        with self._lock:
            self._expected = count
            ready = self._take_if_complete()
        if ready:
            self._acks.settle_many(ready)

    def _take_if_complete(self) -> list[tuple[_Delivery | None, bool]]:
        if self._expected is None or len(self._settled) < self._expected:
            return []
        ready, self._settled = self._settled, []
        return ready


class _ReadAhead:
    """A connected socket that paho reads in large chunks instead of a few bytes at a time.

    paho reads a packet with one ``recv`` for its type, one per byte of its length and one for the
    rest, after a ``select`` for each packet: five system calls per message. This reads up to
    :data:`READ_AHEAD_BYTES` at once and serves paho's small reads from that; ``pending`` tells
    paho's loop that bytes are waiting (as an SSL socket does), so it does not wait in ``select``,
    and the client (:func:`_client_class`) reads every buffered packet in one turn of the loop.
    Everything else is the socket's own. Draining a queue of 4.6 KB messages costs paho 25 us per
    message instead of 37.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(size, READ_AHEAD_BYTES))
            if len(data) <= size:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = end = min(start + size, len(self._buf))
        return self._buf[start:end]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise MissingDependency("paho-mqtt", "mqtt") from exc
    return mqtt


@functools.cache
def _client_class() -> Any:
    """paho's client, reading its socket through :class:`_ReadAhead`."""
    mqtt = _paho()

    class ReadAheadClient(mqtt.Client):  # type: ignore[misc,name-defined]
        def _create_socket(self) -> Any:
            sock = super()._create_socket()
            # Only a plain TCP socket: an SSL socket buffers by itself and tells paho so.
            return _ReadAhead(sock) if type(sock) is socket.socket else sock

        def loop_read(self, max_packets: int = 1) -> Any:
            # paho reads one packet per turn of its loop, each after a select(); read on while
            # whole packets are already buffered (a bounded number, so acks and pings still go).
            rc = super().loop_read(max_packets)
            for _ in range(READ_AHEAD_PACKETS):
                sock = self.socket()
                if rc or not isinstance(sock, _ReadAhead) or not sock.pending():
                    break
                rc = super().loop_read(max_packets)
            return rc

    return ReadAheadClient


class Subscriber:
    """Subscribes to the gateways' topics and feeds every message into the pipeline."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._metrics = pipeline.metrics
        self._broker = Broker.from_url(str(settings.mqtt.url))
        self._filters = topic_filters(str(settings.mqtt.share_group))
        self._max_body_bytes = int(settings.server.max_body_bytes)
        self._client: Client | None = None
        self._acks = _Acks(self._send_acks, on_left=self._want_redelivery)
        self._redeliver_lock = threading.Lock()
        self._redeliver: threading.Timer | None = None
        self._redeliver_delay_s = REDELIVER_MIN_S
        self._redelivered_at = -math.inf
        self._is_connected = False
        self._is_subscribed = False
        self._subscribe_mid: int | None = None
        self._stopping = threading.Event()
        self._known_tenants: set[str] = set()
        #: Topics that checked out (network thread only): the principal and kind of their messages.
        self._topics: dict[str, tuple[Principal, str]] = {}
        self._inbox: deque[_Queued] = deque()
        self._inbox_bytes = 0
        self._inbox_cond = threading.Condition()
        self._admitters: list[threading.Thread] = []
        self._admitter_stop = False
        #: Groups taken from the inbox and still being admitted, by the order they were taken in.
        self._next_ticket = 0
        self._admitting: set[int] = set()

    # life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; the client keeps reconnecting until :meth:`stop`.

        A subscriber runs once: after :meth:`stop`, a new one is built to connect again.
        """
        if self._client is not None or self._stopping.is_set():
            raise RuntimeError("this MQTT subscriber has already been started; build a new one")
        mqtt = _paho()
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = _client_class()(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=str(self._settings.mqtt.client_id),
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        username = str(self._settings.mqtt.username)
        if username:
            client.username_pw_set(username, str(self._settings.mqtt.password) or None)
        if self._broker.is_tls:
            try:
                client.tls_set()
            except (OSError, ValueError) as exc:
                raise ConfigError("mqtt.url", f"cannot set up TLS: {exc}") from exc
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            client.connect_async(
                self._broker.host,
                self._broker.port,
                keepalive=KEEPALIVE_S,
                clean_start=False,
                properties=properties,
            )
        except ValueError as exc:
            raise ConfigError("mqtt.url", str(exc)) from exc
        self._admitter_stop = False
        # With ingest workers, one admitting thread's group is decoded in a worker while another
        # thread writes its own group: one more thread than workers keeps both busy.
        for n in range(1 + self._pipeline.workers):
            thread = threading.Thread(target=self._admit_loop, name=f"mqtt-admit-{n}", daemon=True)
            thread.start()
            self._admitters.append(thread)
        rc = client.loop_start()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._stop_admitter()
            raise Unavailable(f"cannot start the MQTT client: {mqtt.error_string(rc)}")
        self._client = client
        log.info("MQTT: connecting to %s as %s", self._address, self._settings.mqtt.client_id)

    def stop(self) -> None:
        """Stop taking messages, send the acknowledgements of those already durable, disconnect.

        Messages that arrive from now on are left unacknowledged: the broker keeps them for the
        next start.
        """
        client = self._client
        if client is None:
            return
        self._stopping.set()
        with self._redeliver_lock:
            if self._redeliver is not None:
                self._redeliver.cancel()
                self._redeliver = None
        if not self._acks.wait_idle(STOP_DRAIN_S):
            log.warning(
                "MQTT: %d messages still unacknowledged at stop; the broker sends them again",
                self._acks.pending,
            )
        client.disconnect()
        client.loop_stop()
        self._stop_admitter()
        self._client = None
        self._is_connected = self._is_subscribed = False

    def _stop_admitter(self) -> None:
        with self._inbox_cond:
            self._admitter_stop = True
            self._clear_inbox()
        for thread in self._admitters:
            thread.join()
        self._admitters = []

    @property
    def is_connected(self) -> bool:
        """Connected to the broker and subscribed to the gateways' topics."""
        return self._is_connected and self._is_subscribed

    # paho callbacks (network thread) -----------------------------------------------------------
    # paho stops its network thread when a callback raises, so none of them may.
    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                log.error("MQTT: broker %s refused the connection: %s", self._address, reason)
                return
            self._acks.reset()
            with self._inbox_cond:
                self._clear_inbox()  # the previous connection's
            self._is_connected = True
            log.info("MQTT: connected to %s (session present: %s)", self._address, flags.session_present)
            mqtt = _paho()
            from paho.mqtt.subscribeoptions import SubscribeOptions

            rc, mid = client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._filters])
            if rc != mqtt.MQTT_ERR_SUCCESS:
                log.error("MQTT: cannot subscribe to %s: %s", self._filters, mqtt.error_string(rc))
            self._subscribe_mid = mid
        except Exception:
            log.exception("MQTT: error while handling the connection")

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            refused = [(f, str(r)) for f, r in zip(self._filters, reasons, strict=False) if r.is_failure]
            if refused:
                log.error("MQTT: broker %s refused the subscriptions %s", self._address, refused)
                return
            if mid == self._subscribe_mid:
                self._is_subscribed = True
                log.info("MQTT: subscribed to %s", self._filters)
        except Exception:
            log.exception("MQTT: error while handling the subscription answer")

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._is_connected = self._is_subscribed = False
        if not self._stopping.is_set():
            log.warning("MQTT: lost the broker %s (%s); reconnecting", self._address, reason)

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        log.warning("MQTT: cannot reach the broker %s; retrying", self._address)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # unacknowledged: the broker keeps it for the next start
        delivery = self._acks.expect(message.mid) if message.qos > 0 else None
        try:
            self._handle(message, delivery)
        except Exception:
            # A bug, not a bad message: leave it with the broker rather than lose it.
            log.exception("MQTT: message mid=%d could not be handled; left unacknowledged", message.mid)
            self._acks.settle(delivery, ack=False)

    def _want_redelivery(self) -> None:
        """A message of this connection was left unacknowledged: reconnect soon to have it sent again."""
        with self._redeliver_lock:
            if self._redeliver is not None or self._stopping.is_set():
                return
            # Left again soon after the last reconnect (the log still cannot take it): wait longer.
            recent = time.monotonic() - self._redelivered_at < 2 * self._redeliver_delay_s
            self._redeliver_delay_s = (
                min(REDELIVER_MAX_S, 2 * self._redeliver_delay_s) if recent else REDELIVER_MIN_S
            )
            self._redeliver = threading.Timer(self._redeliver_delay_s, self._reconnect_to_redeliver)
            self._redeliver.daemon = True
            self._redeliver.start()

    def _reconnect_to_redeliver(self) -> None:
        with self._redeliver_lock:
            self._redeliver = None
            self._redelivered_at = time.monotonic()
        client = self._client
        if client is None or self._stopping.is_set() or not self._is_connected:
            return  # stopping, or a reconnect is under way already
        log.warning(
            "MQTT: messages were left unacknowledged; reconnecting to %s so that it sends them again",
            self._address,
        )
        # As a dropped connection: paho's loop notices, reconnects and subscribes again.
        shutdown = getattr(client.socket(), "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(OSError):
                shutdown(socket.SHUT_RDWR)

    @property
    def _address(self) -> str:
        return f"{self._broker.host}:{self._broker.port}"

    def _send_acks(self, mids: list[int]) -> None:
        client = self._client
        if client is None:
            return
        mqtt = _paho()
        queue_packet = getattr(client, "_packet_queue", None)
        if len(mids) > 1 and queue_packet is not None:
            # paho sends each ack() as its own write to the socket, after waking its network thread;
            # PUBACKs settled together go out as one write (each is 4 bytes: type, length, packet id).
            packet = b"".join(_PUBACK.pack(_PUBACK_HEAD, 2, mid) for mid in mids)
            queue_packet(_PUBACK_HEAD, packet, 0, 1)
            return
        for mid in mids:
            rc = client.ack(mid, 1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                # The connection is gone; the broker sends the message again and the ledger dedupes it.
                log.info("MQTT: cannot acknowledge mid=%d: %s", mid, mqtt.error_string(rc))
                return

    # messages ----------------------------------------------------------------------------------
    def _handle(self, message: MQTTMessage, delivery: _Delivery | None) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self._drop(delivery, "bad_topic", "<not UTF-8>", "the topic is not UTF-8")
            return
        payload = bytes(message.payload)  # no copy when it already is bytes
        known = self._topics.get(topic)
        if known is None:
            parts = topic.split("/")
            if len(parts) != 5 or parts[0] != "ironwatch" or parts[4] not in KINDS:
                self._drop(
                    delivery, "bad_topic", topic, "not ironwatch/{tenant}/{site}/{gateway}/readings|heartbeat"
                )
                return
            _, tenant, site, gateway, kind = parts
            try:
                if not self._is_tenant(tenant):
                    self._drop(delivery, "unknown_tenant", topic, f"no tenant named {tenant!r}")
                    return
                for field, value in (("site", site), ("gateway", gateway)):
                    if not is_id(value):
                        raise InvalidInput(f"topic {field}", f"{value[:80]!r} is not a valid id")
            except IronwatchError as exc:
                self._reject(delivery, tenant, topic, payload, exc)
                return
            known = (Principal(tenant, Role.GATEWAY, key_id="mqtt", site=site, gateway=gateway), kind)
            if len(self._topics) >= TOPICS_KEPT:
                self._topics.clear()
            self._topics[topic] = known
        principal, kind = known
        try:
            body = self._unwrap(payload)
            if kind == "heartbeat":
                self._heartbeat(principal, body, message)
                self._acks.settle(delivery, ack=True)
                return
        except IronwatchError as exc:
            self._reject(delivery, principal.tenant, topic, payload, exc)
            return
        with self._inbox_cond:
            while self._inbox_bytes >= INBOX_MAX_BYTES and not self._admitter_stop:
                self._inbox_cond.wait()
            self._inbox.append(_Queued(delivery, principal, topic, body))
            self._inbox_bytes += len(body)
            self._inbox_cond.notify_all()

    def _clear_inbox(self) -> None:
        """Drop what waits to be admitted (unacknowledged: the broker sends it again); hold the lock."""
        self._inbox.clear()
        self._inbox_bytes = 0
        self._inbox_cond.notify_all()

    def _admit_loop(self) -> None:
        """The admitting thread: take what is queued, admit it as one group, again."""
        while True:
            with self._inbox_cond:
                while not self._inbox and not self._admitter_stop:
                    self._inbox_cond.wait()
                if self._admitter_stop:
                    return
                ticket = self._next_ticket
                self._next_ticket += 1
                if self._inbox[0].answer is not None:
                    # A heartbeat's answer counts every batch queued before it: wait until the
                    # groups taken earlier (by any admitting thread) are admitted.
                    answer = self._inbox.popleft().answer
                    while any(t < ticket for t in self._admitting) and not self._admitter_stop:
                        self._inbox_cond.wait()
                    if self._admitter_stop:  # it could miss batches still being admitted
                        return
                else:
                    answer = None
                    group: list[_Queued] = []
                    size = 0
                    while (
                        self._inbox
                        and self._inbox[0].answer is None
                        and len(group) < GROUP_MAX_MESSAGES
                        and size < GROUP_MAX_BYTES
                    ):
                        queued = self._inbox.popleft()
                        group.append(queued)
                        size += len(queued.body)
                    self._inbox_bytes -= size
                    self._admitting.add(ticket)
                self._inbox_cond.notify_all()  # the network thread may wait for room
            if answer is not None:
                self._run_answer(answer)
                continue
            try:
                self._admit(group)
            except Exception:
                # A bug, not bad messages: leave them with the broker rather than lose them.
                log.exception("MQTT: %d messages could not be handled; left unacknowledged", len(group))
                for queued in group:
                    self._acks.settle(queued.delivery, ack=False)
            finally:
                with self._inbox_cond:
                    self._admitting.discard(ticket)
                    self._inbox_cond.notify_all()

    @staticmethod
    def _run_answer(answer: Callable[[], None]) -> None:
        try:
            answer()
        except Exception:  # the gateway asks again
            log.exception("MQTT: a heartbeat's answer could not be sent")

    def _admit(self, group: list[_Queued]) -> None:
        answers = _GroupAnswers(group, self._acks)
        refusals = self._pipeline.ingest_many(
            [(queued.principal, queued.body) for queued in group],
            TRANSPORT,
            answers.answer,
            may_register=False,
            may_offload=True,
        )
        for queued, refused in zip(group, refusals, strict=True):
            if isinstance(refused, IronwatchError):
                tenant = queued.principal.tenant
                self._reject(queued.delivery, tenant, queued.topic, queued.body, refused)
            elif refused is not None:
                log.error(
                    "MQTT: message on %s could not be handled; left unacknowledged",
                    queued.topic,
                    exc_info=refused,
                )
                self._acks.settle(queued.delivery, ack=False)
        answers.expect(sum(refused is None for refused in refusals))

    def _is_tenant(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        if not is_id(tenant):
            return False
        try:
            self._pipeline.root_of(tenant)
        except NotFound:
            return False
        self._known_tenants.add(tenant)
        return True

    def _unwrap(self, payload: bytes) -> bytes:
        # JSON never starts with the gzip magic bytes, so gateways may compress without telling.
        if payload[:2] == _GZIP_MAGIC:
            return gunzip(payload, self._max_body_bytes)
        return payload

    def _heartbeat(self, principal: Principal, body: bytes, message: MQTTMessage) -> None:
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise InvalidInput("body", f"expected a JSON object, got {type(doc).__name__}")
        beat = parse_heartbeat(doc, principal)
        self._pipeline.heartbeat(principal.tenant, beat, may_register=False)
        props = getattr(message, "properties", None)
        topic = getattr(props, "ResponseTopic", None)
        if topic is None:
            return
        if topic != gateway_topic(principal.tenant, principal.site or "", principal.gateway or "", "answer"):
            log.warning("MQTT: a heartbeat asks for an answer on %r, not its answer topic; none sent", topic)
            return
        correlation = getattr(props, "CorrelationData", None)
        answer = partial(self._answer, principal, topic, correlation)
        with self._inbox_cond:  # after the batches queued before it (no room needed: it has no body)
            self._inbox.append(_Queued(None, principal, topic, b"", answer))
            self._inbox_cond.notify_all()

    def _answer(self, principal: Principal, topic: str, correlation: bytes | None) -> None:
        """Answer a heartbeat that asks for it (MQTT v5 request/response: a Response Topic and
        Correlation Data) with the highest batch number of its gateway the server holds or has
        begun to write. Only the gateway's own answer topic is served, so a message can never make the
        server publish elsewhere."""
        client = self._client
        if client is None:
            return
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        gateway = principal.gateway or ""
        doc = {"gateway": gateway, "last_batch_stored": self._pipeline.ledger.last(principal.tenant, gateway)}
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            out.CorrelationData = correlation
        info = client.publish(topic, orjson.dumps(doc), qos=1, properties=out)
        if info.rc != _paho().MQTT_ERR_SUCCESS:
            log.info("MQTT: cannot answer the heartbeat on %s: %s", topic, _paho().error_string(info.rc))

    def _reject(
        self, delivery: _Delivery | None, tenant: str, topic: str, payload: bytes, error: IronwatchError
    ) -> None:
        """Quarantine a message that cannot be stored; acknowledge it once the quarantine row is durable."""
        if error.retryable:
            log.warning("MQTT: message on %s not stored now (%s); the broker sends it again", topic, error)
            self._acks.settle(delivery, ack=False)
            return
        reason = _reason(error, topic)
        log.warning("MQTT: quarantined a message on %s: %s", topic, reason)
        try:
            kept = self._pipeline.quarantine_message(tenant, payload, reason, TRANSPORT, topic)
        except IronwatchError as exc:
            log.error("MQTT: cannot quarantine a message on %s (%s); left unacknowledged", topic, exc)
            self._acks.settle(delivery, ack=False)
            return
        kept.add_done_callback(partial(self._on_durable, delivery, topic))

    def _on_durable(self, delivery: _Delivery | None, topic: str, written: Future[Any]) -> None:
        # Runs on the write-ahead log's thread (or inline when the future is already done).
        try:
            error = written.exception()
            if error is not None:
                log.error("MQTT: message on %s is not durable (%s); left unacknowledged", topic, error)
            self._acks.settle(delivery, ack=error is None)
        except Exception:
            log.exception("MQTT: error while acknowledging a message on %s", topic)

    def _drop(self, delivery: _Delivery | None, why: str, topic: str, reason: str) -> None:
        """Acknowledge a message that has no tenant to keep it in: log it and count it."""
        self._metrics.mqtt_messages_dropped.labels(why).inc()
        log.warning("MQTT: dropped a message on %s: %s (no tenant root to quarantine it in)", topic, reason)
        self._acks.settle(delivery, ack=True)


def _reason(error: IronwatchError, topic: str) -> str:
    """The quarantine reason: what is wrong, in words that fit MQTT (there is no key, only a topic)."""
    field = error.details.get("field")
    if error.code == "forbidden" and field in ("site", "gateway"):
        return f"{field}: the message names another {field} than the topic {topic}"
    return f"{error.code}: {error.message}"
