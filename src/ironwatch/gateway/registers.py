"""A Modbus register map: which registers to read, how to decode them, and which reading each one is.

Registers are read in as few requests as possible: the map is planned once into contiguous blocks
per table (at most :data:`MAX_BLOCK` registers each), and every poll decodes the words of all
blocks with a handful of numpy operations, one per layout (type, byte order, word order) in use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ironwatch.errors import ConfigError
from ironwatch.gateway import checks
from ironwatch.gateway.scaling import scale_and_offset
from ironwatch.model import ID_PATTERN, is_id

#: The Modbus limit of registers in one read request (function codes 3 and 4).
MAX_BLOCK = 125
TABLES = ("holding", "input")
TYPES = ("int16", "uint16", "int32", "uint32", "float32")
ORDERS = ("big", "little")
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_DTYPE = {"int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32}
_KEYS = {"address", "table", "type", "byte_order", "word_order", "scale", "offset", "sensor", "metric"}


@dataclass(frozen=True)
class Register:
    """One mapped value: ``value = raw * scale + offset`` becomes the reading ``sensor``/``metric``."""

    address: int
    type: str
    sensor: str
    metric: str
    table: str = "holding"
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        """Registers (16-bit words) the value takes."""
        return _WIDTH[self.type]


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers of ``table`` from ``start``; ``first`` is the map index
    of a register it serves (for messages)."""

    table: str
    start: int
    count: int
    first: int


def parse_registers(items: object, where: str) -> list[Register]:
    """Validate the ``registers`` array of a source table; one :class:`ConfigError` per problem."""
    if not isinstance(items, list) or not items:
        raise ConfigError(where, "expected at least one [[sources.registers]] entry")
    registers: list[Register] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        register = _parse_one(item, at)
        key = (register.sensor, register.metric)
        if key in seen:
            raise ConfigError(
                at,
                f"sensor {register.sensor!r} metric {register.metric!r} is already mapped by [{seen[key]}]",
            )
        seen[key] = i
        registers.append(register)
    return registers


def _parse_one(item: object, at: str) -> Register:
    if not isinstance(item, Mapping):
        raise ConfigError(at, "expected a table with address, type, sensor and metric")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ConfigError(f"{at}.{unknown[0]}", f"unknown key (expected one of {', '.join(sorted(_KEYS))})")
    for key in ("address", "type", "sensor", "metric"):
        if key not in item:
            raise ConfigError(f"{at}.{key}", "missing")
    type_ = checks.choice(item, "type", at, TYPES, None)
    address = item["address"]
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 65535:
        raise ConfigError(f"{at}.address", f"expected an integer from 0 to 65535, got {address!r}")
    if address + _WIDTH[type_] - 1 > 65535:
        raise ConfigError(f"{at}.address", f"a {type_} at {address} ends past register 65535")
    for key in ("sensor", "metric"):
        if not is_id(item[key]):
            raise ConfigError(f"{at}.{key}", f"{str(item[key])[:80]!r} does not match {ID_PATTERN}")
    scale, offset = scale_and_offset(item, at)
    return Register(
        address=address,
        type=type_,
        sensor=item["sensor"],
        metric=item["metric"],
        table=checks.choice(item, "table", at, TABLES, "holding"),
        byte_order=checks.choice(item, "byte_order", at, ORDERS, "big"),
        word_order=checks.choice(item, "word_order", at, ORDERS, "big"),
        scale=scale,
        offset=offset,
    )


def plan_blocks(registers: Sequence[Register], max_count: int = MAX_BLOCK) -> list[Block]:
    """Group the map into as few read requests as possible.

    Registers that touch or overlap share a request; a gap starts a new one, because reading
    unmapped addresses can make a PLC answer "illegal data address" for the whole request.
    """
    blocks: list[Block] = []
    for table in TABLES:
        order = sorted((r.address, i) for i, r in enumerate(registers) if r.table == table)
        start = end = -1
        first = 0
        for address, i in order:
            stop = address + registers[i].width
            if start >= 0 and address <= end and max(end, stop) - start <= max_count:
                end = max(end, stop)
                continue
            if start >= 0:
                blocks.append(Block(table, start, end - start, first))
            start, end, first = address, stop, i
        if start >= 0:
            blocks.append(Block(table, start, end - start, first))
    return blocks


class Decoder:
    """Turns the words of every block of one poll into the values of the map, in map order."""

    def __init__(self, registers: Sequence[Register], blocks: Sequence[Block]) -> None:
        self.size = len(registers)
        # Where each block's words land in the concatenated word array of a poll.
        base: dict[str, list[tuple[int, int, int]]] = {t: [] for t in TABLES}
        at = 0
        for block in blocks:
            base[block.table].append((block.start, block.start + block.count, at))
            at += block.count
        self.words = at
        groups: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
        for i, r in enumerate(registers):
            position = next(p + r.address - s for s, e, p in base[r.table] if s <= r.address < e)
            groups.setdefault((r.type, r.byte_order, r.word_order), []).append((position, i))
        self._groups = [
            (layout, np.array([p for p, _ in pairs]), np.array([i for _, i in pairs]))
            for layout, pairs in groups.items()
        ]
        self._scale = np.array([r.scale for r in registers], dtype=np.float64)
        self._offset = np.array([r.offset for r in registers], dtype=np.float64)
        self.sensor = pa.array([r.sensor for r in registers], pa.string())
        self.metric = pa.array([r.metric for r in registers], pa.string())

    def decode(self, words: npt.NDArray[np.uint16]) -> npt.NDArray[np.float64]:
        """Values of the map (scale and offset applied) from the concatenated words of all blocks."""
        raw = np.empty(self.size, dtype=np.float64)
        for (type_, byte_order, word_order), positions, targets in self._groups:
            first = words[positions]
            if _WIDTH[type_] == 1:
                if byte_order == "little":
                    first = first.byteswap()
                raw[targets] = first.view(_DTYPE[type_])
                continue
            second = words[positions + 1]
            high, low = (first, second) if word_order == "big" else (second, first)
            if byte_order == "little":
                high, low = high.byteswap(), low.byteswap()
            joined = (high.astype(np.uint32) << 16) | low.astype(np.uint32)
            raw[targets] = joined.view(np.float32 if type_ == "float32" else _DTYPE[type_])
        return raw * self._scale + self._offset
