"""The Store interface every castore backend satisfies, and ``open_store`` to pick one by URL."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Protocol

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory


class BlobWriter(Protocol):
    """Streams one blob into the store: ``write`` chunks, then ``commit`` (or ``abort``).

    Usable as a context manager: leaving the block without ``commit`` aborts, so a failed
    write never leaves a partial object behind.
    """

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> Digest:
        """Finish the blob atomically (staging file, then rename) and return its digest."""
        ...

    def abort(self) -> None: ...

    def __enter__(self) -> BlobWriter: ...

    def __exit__(self, *exc: object) -> None: ...


class Store(Protocol):
    """Blobs addressed by blake3 of their contents, and Directory objects by their digest.

    Implementations must be safe for concurrent writers in several processes (xdist workers):
    writes are content-addressed and land by atomic rename.
    """

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """True if the blob is present (its contents are not re-verified).

        With ``size``, only a blob of exactly that size counts (catches truncated objects).
        """
        ...

    def open_blob(self, digest: Digest) -> BinaryIO | None:
        """A reader for the blob, or None if absent.

        Reading to EOF verifies the digest and raises StoreError on corruption.
        """
        ...

    def blob_writer(self) -> BlobWriter:
        """A writer for a new blob (see BlobWriter)."""
        ...

    def get_directory(self, digest: Digest) -> Directory | None:
        """The Directory with this digest, or None if absent. Corruption raises StoreError."""
        ...

    def put_directory(self, directory: Directory) -> Digest:
        """Store ``directory`` and return its digest. Children need not be present yet."""
        ...


def put_blob(store: Store, data: bytes) -> Digest:
    """Store a small blob from memory and return its digest."""
    with store.blob_writer() as w:
        w.write(data)
        return w.commit()


def read_blob(store: Store, digest: Digest) -> bytes | None:
    """Read a whole (small) blob into memory, verified; None if absent."""
    f = store.open_blob(digest)
    if f is None:
        return None
    with f:
        return f.read()


def open_store(url: str | Path) -> Store:
    """Open a store by URL: ``memory://`` or ``local:///abs/dir`` or a plain directory path."""
    text = str(url)
    if text == "memory://" or text.startswith("memory://"):
        from pytest_ocibuild.castore.memory import MemoryStore

        return MemoryStore()
    if text.startswith("local://"):
        text = text[len("local://") :]
    from pytest_ocibuild.castore.local import LocalStore

    return LocalStore(Path(text))
