"""Tenant storage roots, chosen by URL: ``file:///srv/lake/acme`` or ``memory://name``.

A root holds files under relative, ``/``-separated paths. Writes are atomic: a reader sees either no
file or the whole file, never a part of it. Nothing above this module knows whether a root is a
local folder or a bucket; an S3 implementation plugs in behind the same protocol.
"""

from __future__ import annotations

import builtins
import io
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ClassVar, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from ironwatch.errors import InvalidInput, NotFound, StorageError


@runtime_checkable
class Root(Protocol):
    """A tenant's storage root."""

    url: str

    def write(self, path: str, data: bytes) -> None:
        """Store ``data`` at ``path`` atomically, replacing nothing that readers could see half-written."""

    def read(self, path: str) -> bytes:
        """The whole content of ``path``; :class:`NotFound` if absent."""

    def write_stream(self, path: str) -> AbstractContextManager[BinaryIO]:
        """A file to write ``path`` in pieces (``with root.write_stream(p) as f: f.write(...)``).

        The file appears whole when the block ends without an exception, and not at all otherwise.
        """

    def read_stream(self, path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The content of ``path`` in chunks; :class:`NotFound` at once (not on first use) if absent."""

    def exists(self, path: str) -> bool:
        """Whether a complete file is at ``path``."""

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Relative paths of every file under ``prefix``, sorted."""

    def delete(self, path: str) -> None:
        """Remove ``path``; removing a missing file is not an error."""

    def move(self, source: str, target: str) -> None:
        """Move a file within the root (a rename where the backend has one); :class:`NotFound` if absent.

        ``target`` is replaced if it exists. Afterwards ``source`` is gone and ``target`` complete.
        """

    def duckdb_glob(self, pattern: str) -> str:
        """A location DuckDB's ``read_parquet`` understands for files matching ``pattern``."""

    def duckdb_dirs(self) -> builtins.list[str]:
        """Directories a sandboxed DuckDB may read to query this root."""


def _clean(path: str) -> str:
    """Normalise a relative path and refuse anything that would leave the root."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise InvalidInput("path", f"{path!r} is not a relative path inside the root")
    parts = PurePosixPath(path).parts
    if any(p in {"..", "."} for p in parts):
        raise InvalidInput("path", f"{path!r} leaves the root")
    return "/".join(parts)


class LocalRoot:
    """A root in a local folder; atomic writes by write-to-temporary, fsync and rename."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.url = self.directory.as_uri()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create root {self.url}: {exc}") from exc

    def _path(self, path: str) -> Path:
        return self.directory / _clean(path)

    def write(self, path: str, data: bytes) -> None:
        target = self._path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            self._make_dirs(target.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {path} in {self.url}: {exc}") from exc

    @contextmanager
    def write_stream(self, path: str) -> Iterator[BinaryIO]:
        target = self._path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            self._make_dirs(target.parent)
            file = open(tmp, "xb")  # noqa: SIM115 - closed below, before the rename
        except OSError as exc:
            raise StorageError(f"cannot write {path} in {self.url}: {exc}") from exc
        try:
            with file:
                yield file  # what the caller raises passes through untouched, and nothing appears
                try:
                    file.flush()
                    os.fsync(file.fileno())
                except OSError as exc:
                    raise StorageError(f"cannot write {path} in {self.url}: {exc}") from exc
            try:
                os.replace(tmp, target)
                fsync_dir(target.parent)
            except OSError as exc:
                raise StorageError(f"cannot write {path} in {self.url}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def read_stream(self, path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        try:
            file = open(self._path(path), "rb")  # noqa: SIM115 - the generator closes it
        except FileNotFoundError as exc:
            raise NotFound("file", path) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path} in {self.url}: {exc}") from exc
        return _chunks(file, chunk_bytes)

    def _make_dirs(self, directory: Path) -> None:
        """Create missing folders and make their names durable too (a power cut must not lose them)."""
        missing = []
        while not directory.exists() and directory != self.directory:
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            folder.mkdir(exist_ok=True)
            fsync_dir(folder.parent)

    def read(self, path: str) -> bytes:
        try:
            return self._path(path).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound("file", path) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path} in {self.url}: {exc}") from exc

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    def list(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.directory
        if not base.exists():
            return []
        if base.is_file():
            return [prefix]
        out = []
        skip = len(os.path.join(self.directory, ""))  # slicing strings: every query lists its views
        for dirpath, _dirs, files in os.walk(base):
            folder = dirpath[skip:].replace(os.sep, "/")
            for name in files:
                if name.startswith("."):
                    continue  # temporaries of writes in progress
                out.append(f"{folder}/{name}" if folder else name)
        return sorted(out)

    def delete(self, path: str) -> None:
        try:
            self._path(path).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path} in {self.url}: {exc}") from exc

    def move(self, source: str, target: str) -> None:
        src, dst = self._path(source), self._path(target)
        try:
            self._make_dirs(dst.parent)
            os.replace(src, dst)
            fsync_dir(dst.parent)
            if src.parent != dst.parent:
                fsync_dir(src.parent)
        except FileNotFoundError as exc:
            if not src.exists():
                raise NotFound("file", source) from exc
            raise StorageError(f"cannot move {source} to {target} in {self.url}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot move {source} to {target} in {self.url}: {exc}") from exc

    def duckdb_glob(self, pattern: str) -> str:
        return str(self.directory / pattern)

    def duckdb_dirs(self) -> builtins.list[str]:
        return [str(self.directory)]


class MemoryRoot:
    """A root held in memory: a real implementation for tests and throw-away demos."""

    # Named memory roots are shared within one process, so that a writer and a reader meet.
    _registry: ClassVar[dict[str, dict[str, bytes]]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        self.url = f"memory://{name}"
        with self._registry_lock:
            self._files = self._registry.setdefault(name, {})
        self._lock = threading.Lock()

    def write(self, path: str, data: bytes) -> None:
        with self._lock:
            self._files[_clean(path)] = bytes(data)

    def read(self, path: str) -> bytes:
        with self._lock:
            try:
                return self._files[_clean(path)]
            except KeyError as exc:
                raise NotFound("file", path) from exc

    @contextmanager
    def write_stream(self, path: str) -> Iterator[BinaryIO]:
        name = _clean(path)
        buffer = io.BytesIO()
        yield buffer
        with self._lock:
            self._files[name] = buffer.getvalue()

    def read_stream(self, path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        return _chunks(io.BytesIO(self.read(path)), chunk_bytes)

    def exists(self, path: str) -> bool:
        with self._lock:
            return _clean(path) in self._files

    def list(self, prefix: str = "") -> builtins.list[str]:
        prefix = _clean(prefix) if prefix else ""
        with self._lock:
            return sorted(p for p in self._files if not prefix or p == prefix or p.startswith(prefix + "/"))

    def delete(self, path: str) -> None:
        with self._lock:
            self._files.pop(_clean(path), None)

    def move(self, source: str, target: str) -> None:
        src, dst = _clean(source), _clean(target)
        with self._lock:
            if src not in self._files:
                raise NotFound("file", source)
            self._files[dst] = self._files.pop(src)

    def duckdb_glob(self, pattern: str) -> str:
        raise StorageError(f"{self.url} is held in memory and cannot be read by SQL")

    def duckdb_dirs(self) -> builtins.list[str]:
        return []


def _chunks(file: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """Read an open file to its end in chunks, closing it however the reading ends."""
    with file:
        while chunk := file.read(chunk_bytes):
            yield chunk


def fsync_dir(directory: Path) -> None:
    """Make a folder's entries (files created, renamed or removed in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_root(url: str) -> Root:
    """Return the tenant storage root for a URL such as ``file:///srv/lake`` or ``memory://test``.

    A plain path is taken as a local folder.
    """
    parsed = urlparse(url)
    if parsed.scheme in {"", "file"}:
        path = unquote(parsed.path) if parsed.scheme else url
        if not path:
            raise InvalidInput("root", f"{url!r} names no folder")
        return LocalRoot(Path(path))
    if parsed.scheme == "memory":
        return MemoryRoot(parsed.netloc + parsed.path)
    raise InvalidInput(
        "root", f"unsupported storage root scheme {parsed.scheme!r} in {url!r} (file://, memory://)"
    )
