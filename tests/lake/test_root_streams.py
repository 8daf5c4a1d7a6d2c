"""Streaming writes and reads of storage roots, for every backend: whole or nothing, in chunks.

Query results can be far larger than memory, so they are written and served in pieces; the
contract is the same as for ``write``: a reader sees no file or the whole file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ironwatch.errors import InvalidInput, NotFound
from ironwatch.lake import Root, open_root

OpenRoot = Callable[[str], Root]


@pytest.fixture(params=["file", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    if request.param == "file":
        return open_root((tmp_path / "lake roots" / "acme").as_uri())
    return open_root(f"memory://{uuid.uuid4().hex}-acme")


def test_a_file_written_in_pieces_reads_back_whole(root: Root) -> None:
    pieces = [os.urandom(n) for n in (1, 70_000, 0, 333_333, 5)]
    with root.write_stream("results/q1.csv") as out:
        for piece in pieces:
            out.write(piece)
    assert root.read("results/q1.csv") == b"".join(pieces)
    assert root.list("results") == ["results/q1.csv"]


def test_nothing_is_visible_until_the_block_ends(root: Root) -> None:
    root.write("results/q1.csv", b"old")
    with root.write_stream("results/q1.csv") as out:
        out.write(b"new content, partly written")
        assert root.read("results/q1.csv") == b"old"
        assert root.list("results") == ["results/q1.csv"]  # no temporary is listed
    assert root.read("results/q1.csv") == b"new content, partly written"


def test_an_exception_in_the_block_leaves_nothing_and_passes_through(root: Root) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop), root.write_stream("results/q2.csv") as out:
        out.write(b"half of it")
        raise Stop
    assert not root.exists("results/q2.csv")
    assert root.list() == []
    # An OSError of the caller (pyarrow reports a failed read this way) is not turned into a storage error.
    with pytest.raises(OSError, match="from the caller"), root.write_stream("results/q3.csv") as out:
        raise OSError("from the caller")
    assert root.list() == []


def test_an_empty_stream_makes_an_empty_file(root: Root) -> None:
    with root.write_stream("results/empty.csv"):
        pass
    assert root.read("results/empty.csv") == b""
    assert list(root.read_stream("results/empty.csv")) == []


def test_read_stream_gives_chunks_of_the_asked_size(root: Root) -> None:
    data = os.urandom(250_000)
    root.write("results/big.csv", data)
    chunks = list(root.read_stream("results/big.csv", chunk_bytes=100_000))
    assert [len(c) for c in chunks] == [100_000, 100_000, 50_000]
    assert b"".join(chunks) == data


def test_read_stream_of_a_missing_file_fails_before_the_first_chunk(root: Root) -> None:
    with pytest.raises(NotFound):
        root.read_stream("results/missing.csv")  # not iterated: the error comes at once


@pytest.mark.parametrize("path", ["../escape.csv", "/etc/passwd", "results/../../x", ""])
def test_streams_refuse_paths_that_leave_the_root(root: Root, path: str) -> None:
    with pytest.raises(InvalidInput), root.write_stream(path) as out:
        out.write(b"x")
    with pytest.raises(InvalidInput):
        root.read_stream(path)
