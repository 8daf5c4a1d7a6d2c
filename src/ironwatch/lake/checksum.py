"""An order-independent checksum of raw readings, to prove a compaction kept every reading as it was.

Each row (ts, sensor, metric, value, gateway, batch, received_at) hashes to 64 bits; the checksum is
the row count and the sum of the row hashes modulo 2**64, so it does not depend on the order of the
rows or on how they are split into files, and a reading lost, added twice or changed in any column
changes it (up to a 2**-64 chance).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import numpy.typing as npt
import pyarrow as pa

U64 = npt.NDArray[np.uint64]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xD6E8FEB86659FD93)
_C3 = np.uint64(0xA0761D6478BD642F)


def _mix(x: U64) -> U64:
    """The splitmix64 finaliser, in place."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _name_hashes(column: pa.ChunkedArray | pa.Array) -> U64:
    """A 64-bit hash of each row's string, hashing each distinct string once."""
    if isinstance(column, pa.ChunkedArray):
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        column = column.unify_dictionaries().combine_chunks()
    elif not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    per_name = np.array(
        [
            int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
            for s in column.dictionary.to_pylist()
        ],
        dtype=np.uint64,
    )
    hashes: U64 = per_name[column.indices.to_numpy(zero_copy_only=False)]
    return hashes


def _u64(column: pa.ChunkedArray | pa.Array) -> U64:
    """The raw 64 bits of an int64, timestamp or float64 column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_floating(array.type):
        array = array.cast(pa.int64())
    bits: U64 = array.to_numpy(zero_copy_only=False).view(np.uint64)
    return bits


@dataclasses.dataclass
class Checksum:
    """Rows seen so far and the sum of their hashes; add tables in any order."""

    rows: int = 0
    total: int = 0

    def add(self, table: pa.Table) -> None:
        """Count the rows of a table with the raw reading columns (dictionary or plain strings)."""
        if table.num_rows == 0:
            return
        h = _u64(table["ts"]) ^ (_u64(table["value"]) * _C1)
        h = _mix(h)
        h ^= _name_hashes(table["sensor"]) + _name_hashes(table["metric"]) * _C2
        h = _mix(h)
        h ^= _name_hashes(table["gateway"]) + _u64(table["batch"]) * _C3 + _u64(table["received_at"]) * _C1
        h = _mix(h)
        with np.errstate(over="ignore"):
            total = int(h.sum(dtype=np.uint64))
        self.rows += table.num_rows
        self.total = (self.total + total) % (1 << 64)

    @property
    def hex(self) -> str:
        """``ROWS:SUM`` as text, as kept in the compaction journal."""
        return f"{self.rows}:{self.total:016x}"
