"""OPC UA: subscribe to data changes of mapped nodes on a server and hand them to the sampler.

asyncua is asynchronous and the sampler is not, so the subscription lives in a background thread
with its own event loop. Notifications land in a bounded buffer that ``read`` empties. The thread
watches the connection (a subscription status change or a failed keepalive read means it is gone),
and while it is gone it connects again with a growing delay and subscribes anew; ``read`` raises
:class:`SourceUnavailable` in the meantime. The connection code lives in :mod:`opcua_session`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from ironwatch.errors import ConfigError, MissingDependency
from ironwatch.gateway import checks
from ironwatch.gateway.scaling import scale_and_offset
from ironwatch.gateway.source import SourceUnavailable, empty_sample
from ironwatch.model import ID_PATTERN, is_id

log = logging.getLogger(__name__)

TEMPLATE = """\
[[sources]]
type = "opcua"
url = "opc.tcp://192.168.0.20:4840"   # the server (required)
# interval_s = 1.0               # how often the sampler collects what arrived
# publishing_interval_ms = 500   # how often the server sends the changes of the subscription
# timeout_s = 4.0                # connect, request and keepalive timeout
# username = "gateway"           # optional; anonymous when left out
# password = "..."

# One entry per node; value = node value * scale + offset.
[[sources.nodes]]
node = "ns=2;s=Motor1.Temp"      # node id: ns=2;i=2, ns=2;s=Name, ns=2;g=<guid>
sensor = "s-0412"
metric = "temperature"
# scale = 1.0
# offset = 0.0
"""

_KEYS = {"type", "url", "interval_s", "publishing_interval_ms", "timeout_s", "username", "password", "nodes"}
_NODE_KEYS = {"node", "sensor", "metric", "scale", "offset"}
#: Notifications kept between two reads; past this the oldest are dropped (and counted).
BUFFER_SIZE = 100_000


@dataclass(frozen=True)
class Node:
    """One mapped node: its value times ``scale`` plus ``offset`` becomes ``sensor``/``metric``."""

    node: str
    sensor: str
    metric: str
    scale: float = 1.0
    offset: float = 0.0


class OpcUa:
    """An OPC UA server's mapped nodes, through one subscription kept alive in a background thread."""

    def __init__(
        self,
        url: str,
        nodes: list[Node],
        *,
        interval_s: float = 1.0,
        publishing_interval_ms: float = 500.0,
        timeout_s: float = 4.0,
        username: str | None = None,
        password: str | None = None,
        where: str = "opcua",
        buffer_size: int = BUFFER_SIZE,
    ) -> None:
        try:
            import asyncua  # noqa: F401  (fail at construction, with the install line)
        except ImportError as exc:
            raise MissingDependency("asyncua", "opcua") from exc
        parts = urlsplit(url)
        # The name goes into logs: never the credentials a URL may carry.
        self.name = f"opcua {parts.hostname}:{parts.port or 4840}"
        self.url, self.nodes, self.where = url, nodes, where
        self.interval_s = interval_s
        self.publishing_interval_ms = publishing_interval_ms
        self.timeout_s = timeout_s
        self.username, self.password = username, password
        #: Notifications skipped because their status code was not Good, not numeric, or dropped
        #: because the buffer was full.
        self.bad_status = 0
        self.not_numeric = 0
        self.dropped = 0
        self._scale = np.array([n.scale for n in nodes], dtype=np.float64)
        self._offset = np.array([n.offset for n in nodes], dtype=np.float64)
        self._sensor = pa.array([n.sensor for n in nodes], pa.string())
        self._metric = pa.array([n.metric for n in nodes], pa.string())
        self._lock = threading.Lock()
        self._buffer: deque[tuple[int, int, float]] = deque()
        self._buffer_size = buffer_size
        self._last: list[tuple[int, float] | None] = [None] * len(nodes)
        self._warned: set[tuple[str, int]] = set()
        self._session: Any = None

    # The background session calls these three from its own thread.

    def _deliver(self, index: int, ts_ms: int, value: object, status: Any) -> None:
        if not status.is_good():
            self.bad_status += 1
            self._warn_once("status", index, "skipping values with status %s", status.name)
            return
        if isinstance(value, bool | int | float) and not isinstance(value, complex):
            number = float(value)
        else:
            self.not_numeric += 1
            self._warn_once("type", index, "skipping values of type %s", type(value).__name__)
            return
        if self._last[index] == (ts_ms, number):
            return  # the same value again after a re-subscription
        self._last[index] = (ts_ms, number)
        with self._lock:
            if len(self._buffer) >= self._buffer_size:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append((ts_ms, index, number))

    def _warn_once(self, kind: str, index: int, message: str, arg: object) -> None:
        if (kind, index) not in self._warned:
            self._warned.add((kind, index))
            log.warning(
                "%s node %s: " + message + " (counted, logged once)", self.name, self.nodes[index].node, arg
            )

    def open(self) -> None:
        """Start the subscription thread and wait for the first connection (up to ``timeout_s``)."""
        session = self._start()
        if not session.wait_connected(self.timeout_s + 1.0):
            raise SourceUnavailable(self.name, session.reason or "not connected yet")

    def read(self, now_ms: int) -> pa.Table:
        """The values that arrived since the last read, stamped with the server's source timestamps.

        Raises :class:`SourceUnavailable` when nothing arrived and the server is gone.
        """
        session = self._start()
        with self._lock:
            items, self._buffer = self._buffer, deque()
        if not items:
            if not session.is_connected:
                raise SourceUnavailable(self.name, session.reason or "not connected yet")
            return empty_sample()
        ts, index, value = (np.array(column) for column in zip(*items, strict=True))
        indices = pa.array(index.astype(np.int32))
        return pa.table(
            {
                "ts_ms": pa.array(ts.astype(np.int64)),
                "sensor": self._sensor.take(indices),
                "metric": self._metric.take(indices),
                "value": pa.array(value * self._scale[index] + self._offset[index]),
            }
        )

    def declared_rates(self) -> dict[str, float]:
        """At most one change per node per publishing interval (fewer while a value holds still)."""
        return {n.sensor: 60_000.0 / self.publishing_interval_ms for n in self.nodes}

    def check(self) -> None:
        """Connect and read every node once; a missing or non-numeric node is a :class:`ConfigError`."""
        from ironwatch.gateway.opcua_session import check

        check(self)

    def close(self) -> None:
        """Unsubscribe, disconnect and stop the thread; safe to call twice."""
        if self._session is not None:
            self._session.stop(self.timeout_s + 5.0)
            self._session = None

    def _start(self) -> Any:
        if self._session is None:
            from ironwatch.gateway.opcua_session import Session

            self._session = Session(self)
        return self._session


def from_config(table: Mapping[str, Any], where: str, base_dir: Path) -> OpcUa:
    """Build an :class:`OpcUa` source from its ``[[sources]]`` table (nothing is connected)."""
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}", f"unknown key (expected one of {', '.join(sorted(_KEYS))})"
        )
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith("opc.tcp://") or not urlsplit(url).hostname:
        raise ConfigError(f"{where}.url", f"expected opc.tcp://host:port, got {url!r}")
    credentials = {}
    for key in ("username", "password"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}", "expected a string")
        credentials[key] = value
    if (credentials["username"] is None) != (credentials["password"] is None):
        raise ConfigError(f"{where}.password", "username and password go together")
    return OpcUa(
        url,
        _nodes(table.get("nodes"), f"{where}.nodes"),
        interval_s=checks.number(table, "interval_s", where, 1.0, above=0, high=1e6),
        publishing_interval_ms=checks.number(
            table, "publishing_interval_ms", where, 500.0, above=0, high=3.6e6
        ),
        timeout_s=checks.number(table, "timeout_s", where, 4.0, above=0, high=3600.0),
        username=credentials["username"],
        password=credentials["password"],
        where=where,
    )


def _nodes(items: object, where: str) -> list[Node]:
    from asyncua import ua
    from asyncua.ua.uaerrors import UaError

    if not isinstance(items, list) or not items:
        raise ConfigError(where, "expected at least one [[sources.nodes]] entry")
    nodes: list[Node] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(at, "expected a table with node, sensor and metric")
        unknown = sorted(set(item) - _NODE_KEYS)
        if unknown:
            raise ConfigError(
                f"{at}.{unknown[0]}", f"unknown key (expected one of {', '.join(sorted(_NODE_KEYS))})"
            )
        for key in ("node", "sensor", "metric"):
            if key not in item:
                raise ConfigError(f"{at}.{key}", "missing")
        try:
            ua.NodeId.from_string(item["node"])
        except (UaError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"{at}.node", f"{item['node']!r} is not a node id like ns=2;i=7 or ns=2;s=Motor1.Temp"
            ) from None
        for key in ("sensor", "metric"):
            if not is_id(item[key]):
                raise ConfigError(f"{at}.{key}", f"{str(item[key])[:80]!r} does not match {ID_PATTERN}")
        node = Node(
            item["node"],
            item["sensor"],
            item["metric"],
            *scale_and_offset(item, at),
        )
        for j, other in enumerate(nodes):
            if other.node == node.node:
                raise ConfigError(f"{at}.node", f"{node.node} is already mapped by [{j}]")
            if (other.sensor, other.metric) == (node.sensor, node.metric):
                raise ConfigError(
                    at, f"sensor {node.sensor!r} metric {node.metric!r} is already mapped by [{j}]"
                )
        nodes.append(node)
    return nodes
