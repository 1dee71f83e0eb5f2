"""Packs: many small objects in one file, so ingesting a tree makes a few inodes, not one a file.

A ``LocalStore`` keeps the blobs of under ``PACK_MAX`` bytes and the directories that arrive
inside a batch (``LocalStore.batch()``, which ``ingest_path`` opens for every directory it
ingests) in packs, one file each: ``packs/<id>.pack`` (mode 0444, ``id`` 32 random hex
digits) holds::

    the objects' bytes, back to back
    the index: MAGIC, entry count (u64), then (kind u8, digest, offset u64, size u64) for
               each object (kind 0 a blob, 1 a directory's proto bytes), sorted, then the
               blake3 of all the index bytes before it
    the footer: the index's offset (u64), then MAGIC

Creating one inode per small file is what dominates ingesting source-like trees (ext4 without
a journal, as here, also skips every inode freed in the last seconds to minutes on each
allocation); a pack costs one.

Publication is atomic: a pack is written whole to an unnamed staging file and linked into
place, so its objects become visible together, and a killed writer leaves nothing. Packs are
immutable once published; ``gc`` deletes a pack nothing reaches and rewrites one that is
mostly unreachable. A pack whose footer or index does not check out (truncated by a power
loss without ``fsync``, or damaged) is ignored, its objects absent, and ``store verify``
reports it.

Readers load indexes lazily into one dict per store object and look again when the ``packs/``
directory changed (its mtime, and always while that mtime is under two seconds old, since
timestamps are coarser than concurrent writers).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pytest_ocibuild.castore.digest import Digest, hasher
from pytest_ocibuild.errors import StoreError

if TYPE_CHECKING:
    from pytest_ocibuild.castore.local import LocalStore
    from pytest_ocibuild.castore.nodes import Directory
    from pytest_ocibuild.castore.store import BlobWriter

PACK_MAX = 64 << 10  # blobs below this size go into packs
PACK_LIMIT = 128 << 20  # a writer starts a new pack once its current one holds this much
PACK_ENTRIES = 1 << 16  # ... or this many objects (bounds a writer's memory on tiny files)
FLUSH = 1 << 20  # bytes gathered in memory before one write to the pack file
MAGIC = b"OCIBPAK1"
BLOB, DIRECTORY = 0, 1
KIND_NAMES = ("blob", "directory")
_ENTRY = struct.Struct("<B32sQQ")
_COUNT = struct.Struct("<Q")
_TRAILER = 32
_FRESH_NS = 2_000_000_000  # a directory mtime this recent may hide a change in the same tick

Entry = tuple[str, int, int]  # (pack id, offset, size)
Row = tuple[int, bytes, int, int]  # (kind, raw digest, offset, size)


def encode_index(rows: list[Row]) -> bytes:
    """The index bytes for ``rows`` (sorted here)."""
    body = bytearray(MAGIC)
    body += _COUNT.pack(len(rows))
    for row in sorted(rows):
        body += _ENTRY.pack(*row)
    body += hasher(body).digest()
    return bytes(body)


_FOOTER = struct.Struct("<Q8s")


def read_index(path: str) -> tuple[list[Row], int]:
    """The rows of the pack file at ``path`` and where its data ends (the index's offset);
    ValueError names what is wrong with it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _FOOTER.size:
            raise ValueError("too short for a pack (truncated?)")
        f.seek(size - _FOOTER.size)
        offset, magic = _FOOTER.unpack(f.read(_FOOTER.size))
        if magic != MAGIC or offset > size - _FOOTER.size:
            raise ValueError("no pack footer (truncated?)")
        f.seek(offset)
        rows = decode_index(f.read(size - _FOOTER.size - offset))
    if any(off + n > offset for _k, _d, off, n in rows):
        raise ValueError("index names bytes beyond the pack's data")
    return rows, offset


def decode_index(data: bytes) -> list[Row]:
    """Parse index bytes; ValueError names what is wrong."""
    head = len(MAGIC) + _COUNT.size
    if len(data) < head + _TRAILER or not data.startswith(MAGIC):
        raise ValueError("not a pack index")
    body, trailer = data[:-_TRAILER], data[-_TRAILER:]
    if hasher(body).digest() != trailer:
        raise ValueError("index checksum mismatch")
    (count,) = _COUNT.unpack_from(body, len(MAGIC))
    if len(body) != head + count * _ENTRY.size:
        raise ValueError(f"index says {count} entries but holds {len(body) - head} bytes")
    rows = list(_ENTRY.iter_unpack(body[head:]))
    if any(row[0] not in (BLOB, DIRECTORY) for row in rows):
        raise ValueError("index names an unknown kind of object")
    return rows


def is_pack_id(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


class PackIndex:
    """Where each packed object of one ``packs/`` directory is; loaded lazily, thread-safe."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._entries: tuple[dict[bytes, Entry], dict[bytes, Entry]] = ({}, {})
        self._packs: dict[str, list[Row]] = {}
        self._stamp: tuple[int, int] | None = None

    def get(self, digest: Digest, kind: int = BLOB, *, refresh: bool = True) -> Entry | None:
        """The entry for ``digest``; with ``refresh``, look for new packs on a miss."""
        entry = self._entries[kind].get(digest.raw)
        if entry is None and refresh and self.refresh():
            entry = self._entries[kind].get(digest.raw)
        return entry

    def refresh(self) -> bool:
        """Load the packs published since the last look; True if the directory changed."""
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return False
        with self._lock:
            names = {n[:-5] for n in os.listdir(self.dir) if n.endswith(".pack")}
            gone = self._packs.keys() - names
            if gone:  # gc removed packs: rebuild from what is left
                self._packs = {k: v for k, v in self._packs.items() if k not in gone}
                self._entries = ({}, {})
                for pack, rows in self._packs.items():
                    self._add(pack, rows)
            for pack in sorted(names - self._packs.keys()):
                if is_pack_id(pack):
                    rows = self._load(pack)
                    self._packs[pack] = rows
                    self._add(pack, rows)
            fresh = time.time_ns() - st.st_mtime_ns < _FRESH_NS
            self._stamp = None if fresh else stamp
        return True

    def published(self, pack: str, rows: list[Row]) -> None:
        """Record a pack this process has just published."""
        with self._lock:
            self._packs[pack] = rows
            self._add(pack, rows)

    def digests(self, kind: int = BLOB) -> Iterator[bytes]:
        """Raw digests of the packed objects of ``kind`` loaded so far."""
        return iter(list(self._entries[kind]))

    def _add(self, pack: str, rows: list[Row]) -> None:
        for kind, raw, offset, size in rows:
            self._entries[kind].setdefault(raw, (pack, offset, size))

    def _load(self, pack: str) -> list[Row]:
        """A pack's rows (none if it is unreadable)."""
        try:
            return read_index(os.path.join(self.dir, pack + ".pack"))[0]
        except (OSError, ValueError):
            return []


def read_entry(directory: str, entry: Entry, digest: Digest, kind: int = BLOB,
               fd: int | None = None) -> bytes | None:
    """A packed object's bytes, verified; None if its pack has gone (removed by gc).

    ``fd``: the pack, already open (callers reading many of its objects).
    """
    pack, offset, size = entry
    own = fd is None
    if own:
        try:
            fd = os.open(os.path.join(directory, pack + ".pack"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
    assert fd is not None
    try:
        data = os.pread(fd, size, offset)
    finally:
        if own:
            os.close(fd)
    actual = Digest(hasher(data).digest())
    if actual != digest:
        raise StoreError(
            f"{KIND_NAMES[kind]} {digest.hex} (pack {pack}) is corrupt: its contents hash to "
            f"{actual.hex}",
            reason="corrupt",
        )
    return data


class PackWriter:
    """Collects small blobs and directories into packs for one batch of writes; a context
    manager.

    Offers what ingestion needs of a store (``put_bytes``, ``blob_writer``,
    ``put_directory``): new directories and small new blobs are appended to the current pack,
    larger blobs go to the store as loose objects. Leaving the block normally publishes the
    packs (``commit``); an exception discards what is unpublished (``abort``). Thread-safe.
    """

    def __init__(self, store: LocalStore, limit: int = PACK_LIMIT,
                 entries: int = PACK_ENTRIES) -> None:
        self._store = store
        self._limit = limit
        self._entries = entries
        self._lock = threading.Lock()
        self._fd = -1
        self._staging = ""
        self._buf = bytearray()
        self._written = 0
        self._rows: dict[tuple[int, bytes], tuple[int, int]] = {}
        self._done = False
        self.published: list[str] = []
        store.packs.refresh()  # objects packed before are then found without a look each

    def put_bytes(self, data: bytes | bytearray | memoryview) -> Digest:
        """Store a blob held in memory; return its digest."""
        if len(data) >= PACK_MAX:
            return self._store.put_bytes(data)
        digest = Digest(hasher(data).digest())
        # packed ones only: a loose copy (stored outside a batch) costs a stat a file to find
        # and is rare; packing it again only takes its few bytes once more
        if (BLOB, digest.raw) not in self._rows and not self._store._packed(
                digest, len(data), False):
            self._append(BLOB, digest, data)
        return digest

    def put_directory(self, directory: Directory) -> Digest:
        data = directory.encode()
        digest = Digest(hasher(data).digest())
        if (DIRECTORY, digest.raw) not in self._rows and not self._store.has_directory(
                digest, len(data), refresh=False):
            self._append(DIRECTORY, digest, data)
        return digest

    def blob_writer(self) -> BlobWriter:
        return self._store.blob_writer()

    def add(self, kind: int, digest: Digest, data: bytes) -> None:
        """Append an object whose digest is known, even if some pack has it (repacking)."""
        self._append(kind, digest, data)

    def commit(self) -> list[str]:
        """Publish what is pending; return the ids of every pack this writer published."""
        with self._lock:
            if not self._done:
                self._done = True
                try:
                    self._seal()
                finally:
                    self._discard()
        return self.published

    def abort(self) -> None:
        with self._lock:
            self._done = True
            self._discard()

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def _append(self, kind: int, digest: Digest, data: bytes | bytearray | memoryview) -> None:
        key = (kind, digest.raw)
        with self._lock:
            if self._done:
                raise ValueError("pack writer already finished")
            if key in self._rows:
                return
            try:
                if self._fd < 0:
                    self._fd, self._staging, out = self._store._staging_out("pack", False)
                    out.release()
                self._rows[key] = (self._written + len(self._buf), len(data))
                self._buf += data
                if len(self._buf) >= FLUSH:
                    self._flush()
                if self._written >= self._limit or len(self._rows) >= self._entries:
                    self._seal()
            except OSError as e:
                raise StoreError(f"pack staging file: cannot write: {e.strerror}") from e

    def _flush(self) -> None:
        view = memoryview(self._buf)
        while view:
            n = os.pwrite(self._fd, view, self._written)
            self._written += n
            view = view[n:]
        self._buf = bytearray()

    def _seal(self) -> None:
        """Append the index and footer, publish the pack and start afresh."""
        if self._fd < 0:
            return
        store = self._store
        rows = [(kind, raw, off, size) for (kind, raw), (off, size) in self._rows.items()]
        offset = self._written + len(self._buf)
        self._buf += encode_index(rows) + _FOOTER.pack(offset, MAGIC)
        self._flush()
        pack = os.urandom(16).hex()
        store._seal(self._fd, 0o444)
        store._publish(self._fd, self._staging, f"{store._packs_dir}/{pack}.pack", self._written)
        self._staging = ""
        store.packs.published(pack, rows)
        self.published.append(pack)
        self._discard()

    def _discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._staging:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging)
            self._staging = ""
        self._buf = bytearray()
        self._written = 0
        self._rows = {}
