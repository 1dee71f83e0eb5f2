"""MemoryStore: a castore held in a dict, for tests and dry runs."""

from __future__ import annotations

import io
import threading

from pytest_ocibuild.castore.digest import Digest, hasher
from pytest_ocibuild.castore.nodes import Directory


class _MemoryWriter:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._buf = bytearray()
        self._hash = hasher()
        self._done = False

    def write(self, chunk: bytes) -> None:
        if self._done:
            raise ValueError("blob writer already finished")
        self._buf += chunk
        self._hash.update(chunk)

    def commit(self) -> Digest:
        if self._done:
            raise ValueError("blob writer already finished")
        self._done = True
        digest = Digest(self._hash.digest())
        with self._store._lock:
            self._store._blobs.setdefault(digest, bytes(self._buf))
        return digest

    def abort(self) -> None:
        self._done = True
        self._buf = bytearray()

    def __enter__(self) -> _MemoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()


class MemoryStore:
    """Blobs and directories in memory; thread-safe, not shared across processes."""

    def __init__(self) -> None:
        self._blobs: dict[Digest, bytes] = {}
        self._dirs: dict[Digest, Directory] = {}
        self._lock = threading.Lock()

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        data = self._blobs.get(digest)
        return data is not None and (size is None or len(data) == size)

    def open_blob(self, digest: Digest) -> io.BytesIO | None:
        data = self._blobs.get(digest)
        return None if data is None else io.BytesIO(data)

    def blob_writer(self) -> _MemoryWriter:
        return _MemoryWriter(self)

    def get_directory(self, digest: Digest) -> Directory | None:
        return self._dirs.get(digest)

    def put_directory(self, directory: Directory) -> Digest:
        digest = directory.digest
        with self._lock:
            self._dirs.setdefault(digest, directory)
        return digest
