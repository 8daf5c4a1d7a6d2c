"""Bytes held by Python, handed to Arrow's readers as a file in Arrow's own memory.

An Arrow reader may let go of its file in one of Arrow's threads after the read has returned. When
the file wraps Python memory (``io.BytesIO``, or ``bytes`` given to ``pa.BufferReader``), letting go
takes the interpreter's lock. If the interpreter is exiting at that moment, the thread is ended
while it holds C++ frames and the process aborts ("terminate called without an active exception",
exit status -6: about one exit in 500 of a script that read a query answer, seen with gdb). Memory
of Arrow's own pool is freed without the lock, so a copy into it is what every reader of bytes here
gets. The copy is one memcpy of data the reader decodes anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


def arrow_file(data: bytes) -> pa.BufferReader:
    """``data`` copied into Arrow's memory pool, as a file for ``pq.read_table``, ``read_csv``..."""
    import pyarrow as pa  # here, so that importing this module (from the light SDK) loads nothing

    sink = pa.BufferOutputStream()
    sink.write(data)
    return pa.BufferReader(sink.getvalue())
