"""A PLC for tests: a real pymodbus TCP server on a loopback port, in a thread with its own event loop.

The register contents are given as words (``{address: uint16}``) per table, encoded by the test
itself with ``struct`` so decoding is checked against an independent encoder. Every read request
the server answers is recorded in ``requests`` (function code, address, count).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Words = dict[int, int]

_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}


def encode(value: float, type_: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """The register words a PLC holds for ``value`` in the given layout."""
    data = struct.pack(">" + _FORMATS[type_], value)  # ABCD: high word first, high byte first
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def _blocks(words: Words) -> list[SimData]:
    """Contiguous runs of ``words`` as SimData entries; addresses left out answer 'illegal address'."""
    runs: list[SimData] = []
    run: list[int] = []
    start = -1
    for address in sorted(words):
        if run and address != start + len(run):
            runs.append(SimData(start, values=run, datatype=DataType.REGISTERS))
            run = []
        if not run:
            start = address
        run.append(words[address])
    if run:
        runs.append(SimData(start, values=run, datatype=DataType.REGISTERS))
    # pymodbus wants at least one entry per table; a register far away stands in for none.
    return runs or [SimData(65535, values=[0], datatype=DataType.REGISTERS)]


class ModbusPLC:
    """Start, stop and start again on the same port; ``unit`` is the only device id it answers."""

    def __init__(self, port: int, holding: Words, input: Words, unit: int = 1) -> None:
        self.port = port
        self.holding = holding
        self.input = input
        self.unit = unit
        self.requests: list[tuple[int, int, int]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="modbus-plc")
        self._thread.start()
        self._server: ModbusTcpServer | None = None

    async def _action(
        self, function_code: int, _start: int, address: int, count: int, _regs: Any, _set: Any
    ) -> None:
        self.requests.append((function_code, address, count))

    async def _start(self) -> None:
        coils = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        device = SimDevice(
            id=self.unit,
            simdata=(coils, coils, _blocks(self.holding), _blocks(self.input)),
            action=self._action,
        )
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)

    def start(self) -> ModbusPLC:
        """Listen (again) on ``port`` with the current ``holding`` and ``input`` words."""
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, like a PLC switched off."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
            self._server = None

    def close(self) -> None:
        """Stop the server and its thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
