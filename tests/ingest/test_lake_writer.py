"""The lake writer child: when it gives memory back, and what it loads before its first segment."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ironwatch.ingest.lakewriter import _request_within


def test_the_child_knows_whether_a_request_comes_within_its_idle_time() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as requests:
        t0 = time.monotonic()
        assert not _request_within(requests, 0.2)  # idle: the child gives its memory back
        assert time.monotonic() - t0 >= 0.19
        os.write(write_fd, b"\x00")
        assert _request_within(requests, 5)  # a segment waits: keep the memory, it is needed again
        assert requests.read(1) == b"\x00"
        os.close(write_fd)
        assert _request_within(requests, 5)  # the end of the input: the loop ends, nothing to wait for


def test_warming_up_loads_what_the_first_conversion_would() -> None:
    """The server, the lake writer and ingest workers call this while they start, not under load."""
    code = (
        "import sys; from ironwatch.model import warm_up_arrow; "
        "warm_up_arrow(); import numpy as np, pyarrow as pa; after = set(sys.modules); "
        "pa.array(np.zeros(3)); print(sorted(set(sys.modules) - after))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # nothing more to import when the first batch comes
