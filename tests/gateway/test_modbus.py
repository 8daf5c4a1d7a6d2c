"""The Modbus source against a real pymodbus TCP server acting as a PLC on a loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modbus_plc import ModbusPLC, Words, encode

from conftest import free_port, wait_until
from ironwatch.errors import ConfigError
from ironwatch.gateway.modbus import TEMPLATE, Modbus, from_config
from ironwatch.gateway.registers import Register, plan_blocks
from ironwatch.gateway.source import SAMPLE_SCHEMA, Source, SourceUnavailable

# (table, address, type, byte_order, word_order, value): every type in every layout, both tables.
LAYOUTS: list[tuple[str, int, str, str, str, float]] = [
    ("holding", 0, "int16", "big", "big", -1234),
    ("holding", 1, "int16", "little", "big", -2),
    ("holding", 2, "uint16", "big", "big", 65000),
    ("holding", 3, "uint16", "little", "big", 4660),
    ("holding", 4, "int32", "big", "big", -123456789),
    ("holding", 6, "int32", "big", "little", 2000000001),
    ("holding", 8, "uint32", "little", "big", 4000000000),
    ("holding", 10, "uint32", "little", "little", 305419896),
    ("holding", 12, "float32", "big", "big", 21.5),
    ("holding", 14, "float32", "big", "little", -3.25),
    ("holding", 16, "float32", "little", "big", 1e-3),
    ("holding", 18, "float32", "little", "little", 12345.678),
    ("input", 100, "int16", "big", "big", 7),
    ("input", 101, "float32", "big", "little", 1013.25),
    ("input", 200, "uint32", "big", "big", 42),
]
SCALED = ("holding", 20, 653)  # uint16 653 * 0.1 - 40 = 25.3 degrees
WIDE = range(1000, 1300)  # 300 holding registers in a row, value = address


def _words() -> tuple[Words, Words]:
    tables: dict[str, Words] = {"holding": {}, "input": {}}
    for table, address, type_, byte_order, word_order, value in LAYOUTS:
        for i, word in enumerate(encode(value, type_, byte_order, word_order)):
            tables[table][address + i] = word
    tables["holding"][SCALED[1]] = SCALED[2]
    tables["holding"].update({a: a for a in WIDE})
    return tables["holding"], tables["input"]


def _map() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {
            "address": address,
            "table": table,
            "type": type_,
            "byte_order": byte_order,
            "word_order": word_order,
            "sensor": f"s-{table}-{address}",
            "metric": "value",
        }
        for table, address, type_, byte_order, word_order, _ in LAYOUTS
    ]
    entries.append(
        {"address": 20, "type": "uint16", "scale": 0.1, "offset": -40, "sensor": "s-20", "metric": "temp"}
    )
    return entries


@pytest.fixture(scope="module")
def plc() -> Iterator[ModbusPLC]:
    holding, input_ = _words()
    server = ModbusPLC(free_port(), holding, input_).start()
    yield server
    server.close()


def _source(port: int, registers: list[dict[str, Any]], **options: Any) -> Modbus:
    table = {"type": "modbus", "host": "127.0.0.1", "port": port, "registers": registers, **options}
    return from_config(table, "sources[1]", Path("."))


def _values(table: Any) -> dict[tuple[str, str], float]:
    rows = table.to_pylist()
    return {(r["sensor"], r["metric"]): r["value"] for r in rows}


def test_every_type_and_order_decodes_to_the_value_the_plc_holds(plc: ModbusPLC) -> None:
    source = _source(plc.port, _map())
    assert isinstance(source, Source)
    source.open()
    before = len(plc.requests)
    table = source.read(1_700_000_000_123)
    source.close()
    assert table.schema == SAMPLE_SCHEMA
    assert set(table.column("ts_ms").to_pylist()) == {1_700_000_000_123}
    values = _values(table)
    for table_name, address, type_, _, _, expected in LAYOUTS:
        got = values[(f"s-{table_name}-{address}", "value")]
        if type_ == "float32":
            assert got == pytest.approx(expected, rel=1e-7), (table_name, address)
        else:
            assert got == expected, (table_name, address, type_)
    assert values[("s-20", "temp")] == pytest.approx(25.3)
    # holding 0-20 in one request, input 100-102 in another, input 200-201 a third (a gap between).
    assert plc.requests[before:] == [(3, 0, 21), (4, 100, 3), (4, 200, 2)]
    assert source.requests == 3
    assert source.declared_rates()["s-20"] == 60.0


def test_many_registers_are_read_in_few_requests(plc: ModbusPLC) -> None:
    registers = [{"address": a, "type": "uint16", "sensor": f"r{a}", "metric": "raw"} for a in WIDE]
    source = _source(plc.port, registers)
    before = len(plc.requests)
    table = source.read(5)
    source.close()
    assert table.column("value").to_pylist() == [float(a) for a in WIDE]
    assert plc.requests[before:] == [(3, 1000, 125), (3, 1125, 125), (3, 1250, 50)]


def test_a_32_bit_value_never_straddles_two_requests() -> None:
    registers = [Register(a, "uint16", f"r{a}", "raw") for a in range(124)]
    registers.append(Register(124, "float32", "f", "raw"))
    registers.append(Register(130, "int16", "g", "raw", table="input"))
    blocks = [(b.table, b.start, b.count) for b in plan_blocks(registers)]
    assert blocks == [("holding", 0, 124), ("holding", 124, 2), ("input", 130, 1)]


def test_plc_going_away_and_coming_back_on_the_same_port() -> None:
    port = free_port()
    holding = {0: 100, 1: 200}
    plc = ModbusPLC(port, holding, {}).start()
    try:
        source = _source(port, [{"address": 0, "type": "int32", "sensor": "s1", "metric": "count"}])
        source.open()
        assert _values(source.read(1)) == {("s1", "count"): 100 * 65536 + 200}
        plc.stop()
        with pytest.raises(SourceUnavailable) as lost:
            source.read(2)
        assert lost.value.message.startswith(f"source modbus 127.0.0.1:{port}: ")
        with pytest.raises(SourceUnavailable, match=r"connection refused$"):
            source.read(3)
        holding[1] = 201
        plc.start()

        def resumed() -> Any:
            try:
                return _values(source.read(4))
            except SourceUnavailable:
                return None

        assert wait_until(resumed, 10, what="readings after the PLC came back") == {
            ("s1", "count"): 100 * 65536 + 201
        }
        source.close()
    finally:
        plc.close()


def test_a_plc_that_does_not_answer_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    source = _source(
        listener.getsockname()[1],
        [{"address": 0, "type": "uint16", "sensor": "s", "metric": "m"}],
        timeout_s=0.3,
    )
    try:
        with pytest.raises(SourceUnavailable, match=r": no answer within 0.3 s$"):
            source.read(1)
    finally:
        source.close()
        for conn in accepted:
            conn.close()
        listener.close()


def test_check_passes_on_a_good_map(plc: ModbusPLC) -> None:
    _source(plc.port, _map()).check()


def test_check_names_the_register_the_plc_does_not_have(plc: ModbusPLC) -> None:
    registers = [
        {"address": 0, "type": "int16", "sensor": "a", "metric": "m"},
        {"address": 40, "type": "uint32", "sensor": "b", "metric": "m"},
    ]
    with pytest.raises(ConfigError) as error:
        _source(plc.port, registers).check()
    assert error.value.message == (
        "setting sources[1].registers[1].address: holding registers 40-41 of unit 1: "
        "the PLC answered illegal data address (exception code 2)"
    )


def test_check_says_why_it_cannot_connect_or_read(plc: ModbusPLC) -> None:
    port = free_port()
    with pytest.raises(SourceUnavailable) as refused:
        _source(port, _map()).check()
    assert refused.value.message == f"source sources[1] modbus 127.0.0.1:{port}: connection refused"
    with pytest.raises(SourceUnavailable) as wrong_unit:
        _source(plc.port, _map(), unit=9).check()
    assert wrong_unit.value.message.endswith(
        "of unit 9: the PLC answered server device failure (exception code 4)"
    )


REGISTER = {"address": 0, "type": "uint16", "sensor": "s-1", "metric": "temp"}


@pytest.mark.parametrize(
    ("change", "setting", "reason"),
    [
        (
            {"type": "int64"},
            "registers[0].type",
            "expected one of int16, uint16, int32, uint32, float32, got 'int64'",
        ),
        ({"byte_order": "middle"}, "registers[0].byte_order", "expected one of big, little, got 'middle'"),
        ({"word_order": 1}, "registers[0].word_order", "expected one of big, little, got 1"),
        ({"table": "coils"}, "registers[0].table", "expected one of holding, input, got 'coils'"),
        ({"sensor": None}, "registers[0].sensor", "missing"),
        (
            {"metric": "bad metric"},
            "registers[0].metric",
            "'bad metric' does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        ),
        ({"address": 65536}, "registers[0].address", "expected an integer from 0 to 65535, got 65536"),
        ({"address": -1}, "registers[0].address", "expected an integer from 0 to 65535, got -1"),
        (
            {"address": 65535, "type": "float32"},
            "registers[0].address",
            "a float32 at 65535 ends past register 65535",
        ),
        ({"scale": "x"}, "registers[0].scale", "expected a finite number, got 'x'"),
        (
            {"gain": 2},
            "registers[0].gain",
            "unknown key (expected one of address, byte_order, metric, "
            "offset, scale, sensor, table, type, word_order)",
        ),
    ],
)
def test_bad_register_maps_get_one_clear_line(change: dict[str, Any], setting: str, reason: str) -> None:
    register = {**REGISTER, **change}
    register = {k: v for k, v in register.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        _source(502, [register])
    assert error.value.message == f"setting sources[1].{setting}: {reason}"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"registers": [REGISTER, {**REGISTER, "address": 5}]},
            "setting sources[1].registers[1]: sensor 's-1' metric 'temp' is already mapped by [0]",
        ),
        (
            {"registers": []},
            "setting sources[1].registers: expected at least one [[sources.registers]] entry",
        ),
        (
            {"registers": [REGISTER], "host": ""},
            "setting sources[1].host: missing: the PLC's host name or address",
        ),
        (
            {"registers": [REGISTER], "port": 0},
            "setting sources[1].port: expected an integer from 1 to 65535, got 0",
        ),
        (
            {"registers": [REGISTER], "unit": 300},
            "setting sources[1].unit: expected an integer from 0 to 255, got 300",
        ),
        (
            {"registers": [REGISTER], "interval_s": 0},
            "setting sources[1].interval_s: expected a number above 0 and at most 1000000, got 0",
        ),
        (
            {"registers": [REGISTER], "slave": 1},
            "setting sources[1].slave: unknown key (expected one of host, "
            "interval_s, port, registers, timeout_s, type, unit)",
        ),
    ],
)
def test_bad_source_tables_get_one_clear_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_config({"type": "modbus", "host": "plc", **table}, "sources[1]", Path("."))
    assert error.value.message == message


def test_template_builds_a_source() -> None:
    import tomllib

    (table,) = tomllib.loads(TEMPLATE)["sources"]
    source = from_config(table, "sources[0]", Path("."))
    assert source.name == "modbus 192.168.0.10:502"
    assert source.interval_s == 1.0


def test_the_documented_register_map_builds() -> None:
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "docs" / "plc-sources.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    tables = [t for b in blocks for t in tomllib.loads(b).get("sources", []) if t["type"] == "modbus"]
    (table,) = tables
    source = from_config(table, "sources[0]", Path("."))
    assert [(b.table, b.start, b.count) for b in source.blocks] == [("holding", 0, 8), ("input", 100, 2)]
