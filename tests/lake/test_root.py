"""The storage-root contract, run against every implementation chosen by URL.

A new backend (S3, Azure, GCS) joins by adding its URL to ``roots``; every test here then runs
against it as well.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ironwatch.errors import InvalidInput, IronwatchError, NotFound
from ironwatch.lake import Root, open_root

OpenRoot = Callable[[str], Root]


@pytest.fixture(params=["file", "memory"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> OpenRoot:
    """Opens root ``name`` of one backend; the same name opens the same root."""
    if request.param == "file":
        # A space in the folder name checks that file:// URLs are percent-decoded.
        return lambda name: open_root((tmp_path / "lake roots" / name).as_uri())
    unique = uuid.uuid4().hex
    return lambda name: open_root(f"memory://{unique}-{name}")


@pytest.fixture
def root(opener: OpenRoot) -> Root:
    return opener("acme")


def test_written_file_reads_back_whole(root: Root) -> None:
    data = os.urandom(300_000)
    root.write("readings/site=hall-a/date=2026-11-24/hour=10/w1-000000000001.parquet", data)
    assert root.read("readings/site=hall-a/date=2026-11-24/hour=10/w1-000000000001.parquet") == data
    assert root.exists("readings/site=hall-a/date=2026-11-24/hour=10/w1-000000000001.parquet")
    assert root.exists("readings/site=hall-a/date=2026-11-24/hour=10/w1-000000000002.parquet") is False


def test_write_replaces_the_whole_file(root: Root) -> None:
    root.write("results/q.csv", b"a" * 1000)
    root.write("results/q.csv", b"short")
    assert root.read("results/q.csv") == b"short"
    root.write("results/empty.csv", b"")
    assert root.read("results/empty.csv") == b""


def test_list_is_sorted_and_a_prefix_is_a_folder(root: Root) -> None:
    assert root.list() == []
    paths = ["readings/b/2.parquet", "readings/a/1.parquet", "readings2/x.parquet", "quarantine/q.parquet"]
    for p in paths:
        root.write(p, p.encode())
    assert root.list() == sorted(paths)
    assert root.list("readings") == ["readings/a/1.parquet", "readings/b/2.parquet"]
    assert root.list("readings/") == ["readings/a/1.parquet", "readings/b/2.parquet"]
    assert root.list("readings/a") == ["readings/a/1.parquet"]
    assert root.list("read") == []  # not a string prefix: 'read' is no folder
    assert root.list("readings/a/1.parquet") == ["readings/a/1.parquet"]
    assert root.list("nothing/here") == []


def test_delete_removes_and_tolerates_a_missing_file(root: Root) -> None:
    root.write("tmp/x.bin", b"x")
    root.delete("tmp/x.bin")
    assert root.exists("tmp/x.bin") is False
    assert root.list() == []
    root.delete("tmp/x.bin")
    root.delete("never/was.bin")


def test_reading_a_missing_file_is_not_found(root: Root) -> None:
    with pytest.raises(NotFound):
        root.read("readings/none.parquet")


def test_same_url_is_the_same_root_and_other_urls_are_separate(opener: OpenRoot) -> None:
    opener("acme").write("readings/a.parquet", b"acme")
    assert opener("acme").read("readings/a.parquet") == b"acme"
    other = opener("acme2")  # its name starts with the first one's
    assert other.list() == []
    assert other.exists("readings/a.parquet") is False
    with pytest.raises(NotFound):
        other.read("readings/a.parquet")
    other.write("readings/a.parquet", b"acme2")
    assert opener("acme").read("readings/a.parquet") == b"acme"


OUTSIDE = ["../acme2/x", "readings/../../x", "a/../b", "/etc/passwd", "..", "a\\..\\b", "a\x00b"]


@pytest.mark.parametrize("path", OUTSIDE)
def test_paths_that_leave_the_root_are_refused_by_every_method(opener: OpenRoot, path: str) -> None:
    root, neighbour = opener("acme"), opener("acme2")
    neighbour.write("x", b"secret")
    actions: dict[str, Callable[[], object]] = {
        "write": lambda: root.write(path, b"evil"),
        "read": lambda: root.read(path),
        "exists": lambda: root.exists(path),
        "list": lambda: root.list(path),
        "delete": lambda: root.delete(path),
        "move from": lambda: root.move(path, "here"),
        "move to": lambda: root.move("here", path),
    }
    root.write("here", b"mine")
    for name, action in actions.items():
        with pytest.raises(InvalidInput) as caught:
            action()
        assert caught.value.field == "path", name
    assert neighbour.read("x") == b"secret"
    assert root.list() == ["here"]


def test_move_renames_into_new_folders_and_replaces(root: Root) -> None:
    root.write("readings/site=a/old.parquet", b"one")
    root.write("retired/x/old.parquet", b"stale")
    root.move("readings/site=a/old.parquet", "retired/x/old.parquet")
    root.write("readings/site=a/two.parquet", b"two")
    root.move("readings/site=a/two.parquet", "retired/y/deep/two.parquet")
    assert root.list() == ["retired/x/old.parquet", "retired/y/deep/two.parquet"]
    assert root.read("retired/x/old.parquet") == b"one" and root.read("retired/y/deep/two.parquet") == b"two"
    with pytest.raises(NotFound):
        root.move("readings/site=a/old.parquet", "anywhere")


def test_harmless_spellings_are_normalised(root: Root) -> None:
    root.write("./a//b/./c.txt", b"c")
    assert root.list() == ["a/b/c.txt"]
    assert root.read("a/b/c.txt") == b"c"


def test_empty_path_is_refused_except_as_the_whole_root_for_list(root: Root) -> None:
    for action in (lambda: root.write("", b"x"), lambda: root.read(""), lambda: root.delete("")):
        with pytest.raises(InvalidInput):
            action()
    assert root.list("") == []


def test_readers_never_see_a_half_written_file(root: Root) -> None:
    versions = [bytes([i]) * 2_000_000 for i in range(1, 4)]
    root.write("big.bin", versions[0])
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(30):
                root.write("big.bin", versions[i % len(versions)])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads == 0:
        assert root.read("big.bin") in versions
        reads += 1
    thread.join()
    assert errors == []
    assert root.list() == ["big.bin"]  # no temporary file left where a listing shows it


def test_local_root_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = open_root(tmp_path.as_uri())
    for i in range(5):
        root.write(f"readings/part/{i}.parquet", b"x" * 10_000)
    assert sorted(p.name for p in (tmp_path / "readings" / "part").iterdir()) == [
        f"{i}.parquet" for i in range(5)
    ]


def test_plain_path_is_a_local_root(tmp_path: Path) -> None:
    open_root(str(tmp_path)).write("a/b.txt", b"plain")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"plain"


@pytest.mark.parametrize("url", ["ftp://host/lake", "nosuch://x"])
def test_unknown_scheme_is_refused_naming_the_root(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        open_root(url)
    assert caught.value.field == "root"
    assert isinstance(caught.value, IronwatchError)
