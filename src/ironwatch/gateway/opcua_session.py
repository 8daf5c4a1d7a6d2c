"""The connection behind an OPC UA source: a thread with its own event loop that connects,
subscribes, watches the connection and starts over when the server goes away.

Reconnection is done here rather than by asyncua's own supervisor so the behaviour is the same
whatever the library version: every attempt is a fresh client, so nothing of a dead session lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from ironwatch.errors import ConfigError
from ironwatch.gateway.source import SourceUnavailable

if TYPE_CHECKING:
    from ironwatch.gateway.opcua import OpcUa

log = logging.getLogger("ironwatch.gateway.opcua")

#: Delay before the first reconnect attempt, doubled per failure up to the maximum.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0
#: How often the connection is probed when no notification says it is gone.
KEEPALIVE_S = 1.0
#: Changes the server keeps per node between two publishes (so quick changes are not lost).
QUEUE_SIZE = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(ts: datetime) -> int:
    """Epoch milliseconds of an asyncua timestamp (naive ones are UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _MS


def describe(exc: BaseException, timeout_s: float) -> str:
    """A few words for why talking to the server failed."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, UaStatusCodeError):
        return f"the server answered {ua.StatusCode(exc.code).name}"
    if isinstance(exc, OSError):
        return f"connection lost ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


def new_client(source: OpcUa) -> Client:
    """A client for the source's server, with its timeout and credentials."""
    client = Client(source.url, timeout=source.timeout_s)
    if source.username is not None:
        client.set_user(source.username)
    if source.password is not None:
        client.set_password(source.password)
    return client


async def drop(client: Client, timeout_s: float) -> None:
    """Disconnect, and close the socket even when the server is gone (no leaked transports)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), timeout_s)
    with contextlib.suppress(Exception):
        client.disconnect_socket()


class _Handler:
    """Receives the subscription's notifications in the session's thread."""

    def __init__(self, session: Session, indices: dict[Any, int]) -> None:
        self.session = session
        self.indices = indices

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        index = self.indices.get(node.nodeid)
        if index is None:
            return
        dv = data.monitored_item.Value
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        ts_ms = epoch_ms(stamp) if stamp is not None else int(time.time() * 1000)
        status = ua.StatusCode() if dv.StatusCode is None else dv.StatusCode  # absent means Good
        self.session.source._deliver(index, ts_ms, value, status)

    def status_change_notification(self, status: Any) -> None:
        # BadShutdown, BadTimeout, ...: the subscription is gone; reconnect without waiting.
        self.session.lost.set()


class Session:
    """The background thread of one source; started at once, stopped by :meth:`stop`."""

    def __init__(self, source: OpcUa) -> None:
        self.source = source
        self.reason: str | None = None
        self.is_connected = False
        self._settled = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name=f"source-{source.name}", daemon=True)
        self._thread.start()
        self._ready.wait()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the first attempt has connected or failed; whether it is connected now."""
        self._settled.wait(timeout_s)
        return self.is_connected

    def stop(self, timeout_s: float) -> None:
        """Cancel the session task (it disconnects on its way out) and join the thread."""
        self._stopping = True
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                self._loop.call_soon_threadsafe(self._halt)
        self._thread.join(timeout_s)

    def _halt(self) -> None:
        # Python 3.11's wait_for (and some library code) can swallow a cancellation, so the run
        # loop also checks _stopping and sleeps on this event rather than a plain sleep.
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # for library code that asks for "the current loop"
        self._loop = loop
        self._task = loop.create_task(self._run())
        self._ready.set()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
            # asyncua may leave helper tasks behind a dead connection: end them before closing.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def _run(self) -> None:
        source = self.source
        delay = RECONNECT_MIN_S
        while not self._stopping:
            client = new_client(source)
            self.lost = asyncio.Event()
            try:
                await asyncio.wait_for(client.connect(), source.timeout_s)
                await self._subscribe(client)
                self.is_connected, self.reason = True, None
                self._settled.set()
                log.info("%s: subscribed to %d nodes", source.name, len(source.nodes))
                delay = RECONNECT_MIN_S
                reason = await self._watch(client)
            except Exception as exc:
                reason = describe(exc, source.timeout_s)
            finally:
                # Runs on cancellation too: the server sees the session end, no socket is leaked.
                self.is_connected = False
                await drop(client, source.timeout_s)
            if self._stopping:
                break
            self.reason = reason
            self._settled.set()
            log.warning("%s: %s; connecting again in %.1f s", source.name, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
        self.reason = "closed"

    async def _subscribe(self, client: Client) -> None:
        source = self.source
        nodes = [client.get_node(n.node) for n in source.nodes]
        indices = {node.nodeid: i for i, node in enumerate(nodes)}
        subscription = await client.create_subscription(
            source.publishing_interval_ms, _Handler(self, indices)
        )
        results = await subscription.subscribe_data_change(nodes, queuesize=QUEUE_SIZE)
        for spec, result in zip(source.nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                # One missing node must not keep the others from being read; check() names it.
                log.error("%s: cannot subscribe to node %s: %s", source.name, spec.node, result.name)

    async def _watch(self, client: Client) -> str:
        """Return why the connection ended: a status change, or a keepalive read that failed."""
        timeout_s = self.source.timeout_s
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), KEEPALIVE_S)
                return "the subscription ended (server shut down or timed out)"
            try:
                await asyncio.wait_for(client.nodes.server_state.read_value(), timeout_s)
            except Exception as exc:
                return describe(exc, timeout_s)
        return "stopped"


def check(source: OpcUa) -> None:
    """Connect and read each node once (for ``ironwatch gateway check``)."""
    asyncio.run(_check(source))


async def _check(source: OpcUa) -> None:
    where = f"{source.where} {source.name}"
    client = new_client(source)
    try:
        try:
            await asyncio.wait_for(client.connect(), source.timeout_s)
        except Exception as exc:
            raise SourceUnavailable(where, describe(exc, source.timeout_s)) from exc
        for i, node in enumerate(source.nodes):
            setting = f"{source.where}.nodes[{i}].node"
            try:
                dv = await asyncio.wait_for(client.get_node(node.node).read_data_value(), source.timeout_s)
            except UaStatusCodeError as exc:
                name = ua.StatusCode(exc.code).name
                if exc.code in (StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid):
                    raise ConfigError(setting, f"{node.node} does not exist on the server ({name})") from exc
                raise SourceUnavailable(where, f"reading {node.node}: the server answered {name}") from exc
            except Exception as exc:
                raise SourceUnavailable(
                    where, f"reading {node.node}: {describe(exc, source.timeout_s)}"
                ) from exc
            status = ua.StatusCode() if dv.StatusCode is None else dv.StatusCode  # absent means Good
            if not status.is_good():
                raise SourceUnavailable(where, f"{node.node} has status {status.name}")
            value = dv.Value.Value if dv.Value is not None else None
            if not isinstance(value, bool | int | float):
                raise ConfigError(setting, f"{node.node} holds a {type(value).__name__}, not a number")
    finally:
        await drop(client, source.timeout_s)
