"""Modbus TCP: poll holding and input registers of a PLC and decode them through a register map.

pymodbus's synchronous client is used: the sampler already gives each source its own pace, and a
blocking request with a timeout is the simplest thing that cannot pile up. A failed request closes
the connection; the next ``read`` connects again, so a PLC that went away is picked up by itself.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ironwatch.errors import ConfigError, MissingDependency
from ironwatch.gateway import checks
from ironwatch.gateway.registers import Block, Decoder, Register, parse_registers, plan_blocks
from ironwatch.gateway.source import SourceUnavailable

TEMPLATE = """\
[[sources]]
type = "modbus"
host = "192.168.0.10"          # the PLC (required)
# port = 502
# unit = 1                     # unit (slave) id
# interval_s = 1.0             # one poll of every register per interval
# timeout_s = 2.0              # connect and answer timeout

# One entry per value; value = raw * scale + offset.
[[sources.registers]]
address = 0                    # 0-based register address as sent on the wire
# table = "holding"            # holding | input
type = "float32"               # int16 | uint16 | int32 | uint32 | float32
# byte_order = "big"           # big | little: bytes inside each 16-bit register
# word_order = "big"           # big | little: which register holds the high word (32-bit types)
# scale = 1.0
# offset = 0.0
sensor = "s-0412"
metric = "temperature"
"""

_KEYS = {"type", "host", "port", "unit", "interval_s", "timeout_s", "registers"}

#: Modbus exception codes a PLC can answer with, as people know them.
EXCEPTION_CODES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class Modbus:
    """A PLC polled over Modbus TCP; one reading per mapped register per ``read``."""

    def __init__(
        self,
        host: str,
        registers: list[Register],
        *,
        port: int = 502,
        unit: int = 1,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        where: str = "modbus",
    ) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
        except ImportError as exc:
            raise MissingDependency("pymodbus", "modbus") from exc
        self.name = f"modbus {host}:{port}"
        self.interval_s = interval_s
        self.host, self.port, self.unit, self.timeout_s = host, port, unit, timeout_s
        self.where = where
        self.registers = registers
        self.blocks: list[Block] = plan_blocks(registers)
        self._decoder = Decoder(registers, self.blocks)
        # retries=0: the sampler's next interval is the retry; a retry inside read would hold it up.
        self._client: Any = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0)
        #: Read requests sent so far (for metrics and tests).
        self.requests = 0

    def open(self) -> None:
        """Connect to the PLC, or raise :class:`SourceUnavailable` saying why not."""
        self._connect(self.name)

    def read(self, now_ms: int) -> pa.Table:
        """Poll every block once; one reading per mapped register, all stamped ``now_ms``."""
        words = self._poll(self.name)
        values = self._decoder.decode(words)
        n = len(self.registers)
        return pa.table(
            {
                "ts_ms": pa.array(np.full(n, now_ms, dtype=np.int64)),
                "sensor": self._decoder.sensor,
                "metric": self._decoder.metric,
                "value": pa.array(values),
            }
        )

    def declared_rates(self) -> dict[str, float]:
        """Each mapped sensor delivers one reading per metric per poll."""
        return {r.sensor: 60.0 / self.interval_s for r in self.registers}

    def check(self) -> None:
        """Connect and read every block once; an address the PLC refuses is a :class:`ConfigError`."""
        source = f"{self.where} {self.name}"
        try:
            self._poll(source, config_errors=True)
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection; a later ``read`` connects again."""
        self._client.close()

    def _connect(self, source: str) -> None:
        if self._client.connected:
            return
        # A plain connect first: pymodbus would log an error for every failed attempt (once per
        # interval during an outage) and keep the reason to itself; this way it is in the message.
        failure = _connect_failure(self.host, self.port, self.timeout_s)
        if failure is not None:
            raise SourceUnavailable(source, failure)
        if not self._client.connect():
            raise SourceUnavailable(source, "cannot connect")

    def _poll(self, source: str, config_errors: bool = False) -> np.ndarray[Any, np.dtype[np.uint16]]:
        from pymodbus.exceptions import ModbusException

        self._connect(source)
        words = np.empty(self._decoder.words, dtype=np.uint16)
        at = 0
        for block in self.blocks:
            read = (
                self._client.read_holding_registers
                if block.table == "holding"
                else self._client.read_input_registers
            )
            self.requests += 1
            try:
                response = read(block.start, count=block.count, device_id=self.unit)
            except ModbusException as exc:
                self._client.close()
                raise SourceUnavailable(source, self._failure(exc)) from exc
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                self._client.close()
                reason = (
                    f"{block.table} registers {block.start}-{block.start + block.count - 1} of unit "
                    f"{self.unit}: the PLC answered {EXCEPTION_CODES.get(code, 'an error')} "
                    f"(exception code {code})"
                )
                if config_errors and code in (1, 2):
                    # The map names registers this PLC does not have: retrying cannot help.
                    raise ConfigError(f"{self.where}.registers[{block.first}].address", reason)
                raise SourceUnavailable(source, reason)
            registers = response.registers
            if len(registers) != block.count:
                self._client.close()
                raise SourceUnavailable(
                    source, f"asked {block.count} registers from {block.start}, got {len(registers)}"
                )
            words[at : at + block.count] = registers
            at += block.count
        return words

    def _failure(self, exc: Exception) -> str:
        text = str(exc)
        if "No response" in text or "timeout" in text.lower():
            return f"no answer within {self.timeout_s:g} s"
        if "closed" in text:
            return "the PLC closed the connection"
        if "Failed to connect" in text:
            return _connect_failure(self.host, self.port, self.timeout_s) or "cannot connect"
        return text.removeprefix("Modbus Error: ")


def _connect_failure(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to ``host:port`` cannot be made, in a few words; None when it can."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except TimeoutError:
        return f"no answer to connect within {timeout_s:g} s"
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return exc.strerror or str(exc)
    return None


def from_config(table: Mapping[str, Any], where: str, base_dir: Path) -> Modbus:
    """Build a :class:`Modbus` source from its ``[[sources]]`` table (nothing is connected)."""
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}", f"unknown key (expected one of {', '.join(sorted(_KEYS))})"
        )
    host = table.get("host")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}.host", "missing: the PLC's host name or address")
    port = checks.number(table, "port", where, 502, low=1, high=65535, integer=True)
    unit = checks.number(table, "unit", where, 1, low=0, high=255, integer=True)
    interval_s = checks.number(table, "interval_s", where, 1.0, above=0, high=1e6)
    timeout_s = checks.number(table, "timeout_s", where, 2.0, above=0, high=1e6)
    registers = parse_registers(table.get("registers"), f"{where}.registers")
    return Modbus(
        host, registers, port=port, unit=unit, interval_s=interval_s, timeout_s=timeout_s, where=where
    )
