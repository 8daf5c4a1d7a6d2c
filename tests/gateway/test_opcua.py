"""The OPC UA source against a real asyncua server acting as a PLC on a loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from opcua_plc import OpcUaPLC

from conftest import free_port, wait_until
from ironwatch.errors import ConfigError
from ironwatch.gateway.opcua import TEMPLATE, OpcUa, from_config
from ironwatch.gateway.source import SAMPLE_SCHEMA, Source, SourceUnavailable

TEMP = {"node": "ns=2;s=Motor1.Temp", "sensor": "m1", "metric": "temperature", "scale": 2.0, "offset": 1.0}
SPEED = {"node": "ns=2;i=7", "sensor": "m1", "metric": "speed"}
RUNNING = {"node": "ns=2;s=Motor1.Running", "sensor": "m1", "metric": "running"}
NAME = {"node": "ns=2;s=Motor1.Name", "sensor": "m1", "metric": "name"}


@pytest.fixture(scope="module")
def plc() -> Iterator[OpcUaPLC]:
    server = OpcUaPLC(free_port()).start()
    yield server
    server.close()


def _source(url: str, nodes: list[dict[str, Any]], **options: Any) -> OpcUa:
    table = {"type": "opcua", "url": url, "nodes": nodes, "publishing_interval_ms": 50, **options}
    return from_config(table, "sources[2]", Path("."))


class Collector:
    """Everything a source delivered, read by polling as the sampler would."""

    def __init__(self, source: OpcUa) -> None:
        self.source = source
        self.rows: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        table = self.source.read(0)
        assert table.schema == SAMPLE_SCHEMA
        self.rows.extend(table.to_pylist())
        return self.rows

    def until(self, what: str, check: Any) -> list[dict[str, Any]]:
        """Poll until some delivered row satisfies ``check``; those rows."""
        return wait_until(lambda: [r for r in self.poll() if check(r)], 10, what=what)  # type: ignore[no-any-return]


def test_changes_arrive_with_the_server_source_timestamps(plc: OpcUaPLC) -> None:
    source = _source(plc.url, [TEMP, SPEED, RUNNING])
    assert isinstance(source, Source)
    try:
        source.open()
        got = Collector(source)
        got.until("the initial values", lambda r: r["metric"] == "running")
        assert {(r["metric"], r["value"]) for r in got.rows} >= {
            ("temperature", 44.0),
            ("speed", 1500.0),
            ("running", 1.0),
        }
        stamp = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
        plc.write("ns=2;s=Motor1.Temp", 30.25, source_ts=stamp)
        plc.write("ns=2;i=7", ua.Variant(1499, ua.VariantType.Int32), source_ts=stamp)
        (temp,) = got.until("the new temperature", lambda r: r["value"] == 61.5)
        assert temp == {"ts_ms": 1893553445678, "sensor": "m1", "metric": "temperature", "value": 61.5}
        (speed,) = got.until("the new speed", lambda r: r["value"] == 1499.0)
        assert speed["ts_ms"] == 1893553445678
        assert source.declared_rates() == {"m1": 1200.0}
    finally:
        plc.write("ns=2;s=Motor1.Temp", 21.5)
        source.close()
        source.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("source-opcua")]


def test_values_with_a_bad_status_or_no_number_are_skipped_and_counted(plc: OpcUaPLC) -> None:
    source = _source(plc.url, [TEMP, NAME])
    try:
        source.open()
        got = Collector(source)
        got.until("the initial temperature", lambda r: r["metric"] == "temperature")
        wait_until(lambda: source.not_numeric == 1, 5, what="the string value counted")
        plc.write("ns=2;s=Motor1.Temp", 99.0, status=ua.StatusCodes.BadSensorFailure)
        wait_until(lambda: source.bad_status == 1, 5, what="the bad value counted")
        plc.write("ns=2;s=Motor1.Temp", 10.0)
        got.until("the good value after the bad one", lambda r: r["value"] == 21.0)
        assert [r["value"] for r in got.rows][1:] == [21.0]  # the first is whatever the PLC held
        assert source.not_numeric == 1
    finally:
        plc.write("ns=2;s=Motor1.Temp", 21.5)
        source.close()


def test_server_going_away_and_coming_back_on_the_same_port() -> None:
    plc = OpcUaPLC(free_port()).start()
    source = _source(plc.url, [TEMP])
    try:
        source.open()
        got = Collector(source)
        got.until("the initial value", lambda r: r["value"] == 44.0)
        plc.stop()

        def unavailable() -> str | None:
            try:
                source.read(0)
            except SourceUnavailable as exc:
                return exc.message
            return None

        message = wait_until(unavailable, 10, what="the source to notice the server is gone")
        assert message.startswith(f"source opcua 127.0.0.1:{plc.port}: ")
        plc.start()
        wait_until(lambda: not unavailable(), 15, what="the source to reconnect by itself")
        plc.write("ns=2;s=Motor1.Temp", 50.0)
        got.until("a value written after the restart", lambda r: r["value"] == 101.0)
    finally:
        source.close()
        plc.close()


def test_open_says_why_it_cannot_connect() -> None:
    port = free_port()
    source = _source(f"opc.tcp://127.0.0.1:{port}", [TEMP])
    try:
        with pytest.raises(SourceUnavailable) as error:
            source.open()
        assert error.value.message == f"source opcua 127.0.0.1:{port}: connection refused"
        with pytest.raises(SourceUnavailable, match=r"connection refused$"):
            source.read(0)
    finally:
        source.close()
    with pytest.raises(SourceUnavailable) as checked:
        source.check()
    assert checked.value.message == f"source sources[2] opcua 127.0.0.1:{port}: connection refused"


def test_check_reads_every_node_once(plc: OpcUaPLC) -> None:
    _source(plc.url, [TEMP, SPEED, RUNNING]).check()
    with pytest.raises(ConfigError) as missing:
        _source(plc.url, [TEMP, {**SPEED, "node": "ns=2;s=Motor9.Speed"}]).check()
    assert missing.value.message == (
        "setting sources[2].nodes[1].node: ns=2;s=Motor9.Speed does not exist on the server "
        "(BadNodeIdUnknown)"
    )
    with pytest.raises(ConfigError) as text:
        _source(plc.url, [NAME]).check()
    assert (
        text.value.message == "setting sources[2].nodes[0].node: ns=2;s=Motor1.Name holds a str, not a number"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "http://plc:4840"}, "sources[2].url: expected opc.tcp://host:port, got 'http://plc:4840'"),
        ({"nodes": []}, "sources[2].nodes: expected at least one [[sources.nodes]] entry"),
        (
            {"nodes": [{**TEMP, "node": "Motor1.Temp"}]},
            "sources[2].nodes[0].node: 'Motor1.Temp' is not a node id like ns=2;i=7 or ns=2;s=Motor1.Temp",
        ),
        ({"nodes": [{"node": "ns=2;i=7", "sensor": "m1"}]}, "sources[2].nodes[0].metric: missing"),
        (
            {"nodes": [{**TEMP, "sensor": "m 1"}]},
            "sources[2].nodes[0].sensor: 'm 1' does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        ),
        (
            {"nodes": [TEMP, {**SPEED, "metric": "temperature"}]},
            "sources[2].nodes[1]: sensor 'm1' metric 'temperature' is already mapped by [0]",
        ),
        (
            {"nodes": [TEMP, {**TEMP, "metric": "t2"}]},
            "sources[2].nodes[1].node: ns=2;s=Motor1.Temp is already mapped by [0]",
        ),
        ({"nodes": [{**TEMP, "scale": "2"}]}, "sources[2].nodes[0].scale: expected a finite number, got '2'"),
        (
            {"nodes": [{**TEMP, "unit": "C"}]},
            "sources[2].nodes[0].unit: unknown key (expected one of metric, node, offset, scale, sensor)",
        ),
        ({"username": "gw"}, "sources[2].password: username and password go together"),
        (
            {"publishing_interval_ms": 0},
            "sources[2].publishing_interval_ms: expected a number above 0 and at most 3600000, got 0",
        ),
        (
            {"endpoint": "x"},
            "sources[2].endpoint: unknown key (expected one of interval_s, nodes, password, "
            "publishing_interval_ms, timeout_s, type, url, username)",
        ),
    ],
)
def test_bad_configs_get_one_clear_line(change: dict[str, Any], message: str) -> None:
    table = {"type": "opcua", "url": "opc.tcp://plc:4840", "nodes": [TEMP], **change}
    with pytest.raises(ConfigError) as error:
        from_config(table, "sources[2]", Path("."))
    assert error.value.message == f"setting {message}"


def test_template_builds_a_source() -> None:
    import tomllib

    (table,) = tomllib.loads(TEMPLATE)["sources"]
    source = from_config(table, "sources[0]", Path("."))
    assert source.name == "opcua 192.168.0.20:4840"
    assert (source.interval_s, source.publishing_interval_ms, source.timeout_s) == (1.0, 500.0, 4.0)


def test_the_documented_node_map_builds() -> None:
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "docs" / "plc-sources.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    tables = [t for b in blocks for t in tomllib.loads(b).get("sources", []) if t["type"] == "opcua"]
    (table,) = tables
    source = from_config(table, "sources[0]", Path("."))
    assert [n.metric for n in source.nodes] == ["current", "temperature", "displacement_mm", "running"]
