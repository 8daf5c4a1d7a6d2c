import sys

import pyarrow as pa
import pyarrow.parquet as pq

from ironwatch.arrowfile import arrow_file


def test_the_file_holds_no_python_memory() -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"value": [1.0, 2.0, 3.0]}), sink)
    data = sink.getvalue().to_pybytes()
    refs = sys.getrefcount(data)
    reader = arrow_file(data)
    # pa.BufferReader(data) would hold a reference to ``data`` and read its memory in place.
    assert sys.getrefcount(data) == refs
    assert reader.read_buffer(4).address != pa.py_buffer(data).address
    reader.seek(0)
    assert pq.read_table(reader)["value"].to_pylist() == [1.0, 2.0, 3.0]
