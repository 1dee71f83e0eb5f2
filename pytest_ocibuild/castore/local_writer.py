"""The streaming blob writer of LocalStore (``LocalStore.blob_writer``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pytest_ocibuild.castore.digest import Digest, hasher
from pytest_ocibuild.castore.direct import DirectWriter
from pytest_ocibuild.castore.local_files import present, unlink_quiet
from pytest_ocibuild.errors import StoreError

if TYPE_CHECKING:
    from pytest_ocibuild.castore.local import LocalStore

_LAZY = 1 << 20  # blobs up to this size are buffered before any staging file exists


class LocalWriter:
    """Streams a blob into a private staging file, hashing as it goes.

    The first ``_LAZY`` bytes are held in memory and the staging file is only created once
    the blob outgrows them or turns out to be new, so re-storing a small blob that is already
    present touches nothing on disk.
    """

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._fd, self._path = -1, ""
        self._out: DirectWriter | None = None
        self._head = bytearray()
        self._hash = hasher()
        self._size = 0
        self._done = False

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise ValueError("blob writer already finished")
        self._hash.update(chunk)
        self._size += len(chunk)
        if self._out is None and len(self._head) + len(chunk) <= _LAZY:
            self._head += chunk
            return
        try:
            self._spill()
            assert self._out is not None
            self._out.write(chunk)
        except OSError as e:
            self.abort()
            where = self._path or "staging file"
            raise StoreError(f"{where}: cannot write blob: {e.strerror}") from e

    def write_from(self, fd: int) -> int:
        """Append everything left in the file ``fd`` (read straight into the staging file's
        aligned buffer: one copy); return the number of bytes. OSErrors abort the writer."""
        if self._done:
            raise ValueError("blob writer already finished")
        total = 0
        try:
            self._spill()
            assert self._out is not None
            while n := self._out.fill_from(fd, self._hash.update):
                total += n
        except BaseException:
            self.abort()
            raise
        self._size += total
        return total

    def _spill(self) -> None:
        """Create the staging file (once) and flush the in-memory head to it."""
        if self._out is None:
            self._fd, self._path, self._out = self._store._staging_out("blob")
            self._out.write(self._head)
            self._head = bytearray()

    def commit(self) -> Digest:
        if self._done:
            raise ValueError("blob writer already finished")
        self._done = True
        digest = Digest(self._hash.digest())
        if self._out is None:  # small: still in memory, no staging file yet
            head, self._head = self._head, bytearray()
            self._store._put_known(digest, head)
            return digest
        target = self._store._blob_file(digest)
        try:
            if present(target, self._size, digest):  # already stored: nothing to write
                self._cleanup()
                return digest
            assert self._out is not None
            self._out.close()
            self._store._seal(self._fd, 0o444)
            self._store._publish(self._fd, self._path, target, self._size)
            self._path = ""  # published: nothing left to unlink
            self._cleanup()
        except BaseException as e:
            self._cleanup()
            if isinstance(e, OSError):
                raise StoreError(f"blob {digest.hex}: cannot store: {e.strerror}") from e
            raise
        return digest

    def abort(self) -> None:
        self._done = True
        self._cleanup()

    def _cleanup(self) -> None:
        self._head = bytearray()
        if self._out is not None:
            self._out.release()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path:
            unlink_quiet(self._path)

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()
