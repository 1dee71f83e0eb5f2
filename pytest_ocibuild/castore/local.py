"""LocalStore: a castore in a directory, safe for many concurrent writer processes.

Layout under ``root``::

    blobs/<2 hex>/<64 hex>      blob contents, mode 0444
    blobs/<2 hex>/<64 hex>.x    0555 twin, made on demand by ``blob_path(executable=True)``
    directories/<2 hex>/<64 hex>  canonical proto bytes of a Directory
    tmp/                        staging files, one unique name per writer

Every object is written to its own staging file in ``tmp/`` (same filesystem), fsynced, then
renamed into place. Objects are content-addressed, so a rename over an existing object replaces
it with identical bytes and a concurrent writer of the same object can never observe a missing
staging file (the race Nixery had with a shared ``staging/<hash>`` name). Reads verify digests.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pytest_ocibuild.castore.digest import Digest, hasher
from pytest_ocibuild.castore.nodes import Directory
from pytest_ocibuild.errors import StoreError

_HEX = frozenset("0123456789abcdef")
_STAGING_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class LocalStore:
    """A content-addressed store on the local filesystem (see module docstring for layout).

    ``fsync`` (default True) makes every object durable before its name appears; turning it off
    is only for throwaway stores (tests, benchmarks of the no-fsync upper bound).
    """

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._blobs = self.root / "blobs"
        self._dirs = self.root / "directories"
        self._tmp = self.root / "tmp"
        for d in (self._blobs, self._dirs, self._tmp):
            d.mkdir(parents=True, exist_ok=True)  # idempotent, tolerant of concurrent creators
        self._pid = os.getpid()
        self._token = f"{self._pid}-{os.urandom(6).hex()}"
        self._counter = itertools.count()
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths and staging -------------------------------------------------------------

    def _blob_file(self, digest: Digest) -> Path:
        h = digest.hex
        return self._blobs / h[:2] / h

    def _dir_file(self, digest: Digest) -> Path:
        h = digest.hex
        return self._dirs / h[:2] / h

    def _staging(self, kind: str) -> tuple[int, str]:
        """Create a fresh staging file no other writer can share; return (fd, path)."""
        if os.getpid() != self._pid:  # forked: take a new identity
            self._pid = os.getpid()
            self._token = f"{self._pid}-{os.urandom(6).hex()}"
        while True:
            with self._lock:
                n = next(self._counter)
            path = os.path.join(self._tmp, f"{kind}.{self._token}.{n}")
            try:
                return os.open(path, _STAGING_FLAGS, 0o600), path
            except FileExistsError:  # pragma: no cover - only with a colliding random token
                continue

    def _install(self, staging: str, target: Path) -> None:
        """Move a finished staging file to ``target``; an existing target means success."""
        parent = target.parent
        if parent not in self._made:
            parent.mkdir(exist_ok=True)
            self._made.add(parent)
        if target.exists():
            os.unlink(staging)
            return
        os.rename(staging, target)

    def _finish(self, fd: int, staging: str, mode: int) -> None:
        try:
            os.fchmod(fd, mode)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- blobs -------------------------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        return self._blob_file(digest).exists()

    def open_blob(self, digest: Digest) -> io.BufferedReader | None:
        """A buffered reader that verifies the blob's digest when it reaches EOF."""
        try:
            f = open(self._blob_file(digest), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            return None
        return io.BufferedReader(_VerifyingReader(f, digest), buffer_size=1 << 20)

    def blob_writer(self) -> _LocalWriter:
        return _LocalWriter(self)

    def blob_path(self, digest: Digest, executable: bool = False) -> Path | None:
        """On-disk path of the blob (for hardlinking), or None if absent.

        The plain blob is mode 0444; ``executable=True`` returns a 0555 twin ``<hex>.x``
        (one inode cannot carry two modes), created on demand race-free. Contents are not
        re-verified here.
        """
        plain = self._blob_file(digest)
        if not plain.exists():
            return None
        if not executable:
            return plain
        twin = plain.with_name(plain.name + ".x")
        if twin.exists():
            return twin
        fd, staging = self._staging("exec")
        try:
            with open(plain, "rb") as src:
                _copy_fd(src.fileno(), fd)
            self._finish(fd, staging, 0o555)
            fd = -1
            self._install(staging, twin)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            _unlink_quiet(staging)
            raise
        return twin

    def iter_blobs(self) -> Iterator[Digest]:
        """Every blob digest present (twins excluded), in no particular order."""
        yield from _iter_objects(self._blobs)

    # -- directories -------------------------------------------------------------------

    def get_directory(self, digest: Digest) -> Directory | None:
        try:
            data = self._dir_file(digest).read_bytes()
        except FileNotFoundError:
            return None
        actual = Digest.of(data)
        if actual != digest:
            raise StoreError(
                f"directory {digest.hex} is corrupt: its contents hash to {actual.hex}",
                reason="corrupt",
            )
        try:
            return Directory.decode(data)
        except ValueError as e:
            raise StoreError(f"directory {digest.hex} is corrupt: {e}", reason="corrupt") from e

    def put_directory(self, directory: Directory) -> Digest:
        data = directory.encode()
        digest = Digest.of(data)
        target = self._dir_file(digest)
        if target.exists():
            return digest
        fd, staging = self._staging("dir")
        try:
            os.write(fd, data)
            self._finish(fd, staging, 0o444)
            fd = -1
            self._install(staging, target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            _unlink_quiet(staging)
            raise
        return digest

    def iter_directories(self) -> Iterator[Digest]:
        """Every directory digest present, in no particular order."""
        yield from _iter_objects(self._dirs)

    def staging_files(self) -> list[str]:
        """Names currently in ``tmp/`` (leftovers of crashed writers, or writes in flight)."""
        return sorted(os.listdir(self._tmp))


class _LocalWriter:
    """Streams a blob into a private staging file, hashing as it goes."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._fd, self._path = store._staging("blob")
        self._hash = hasher()
        self._done = False

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise ValueError("blob writer already finished")
        self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> Digest:
        if self._done:
            raise ValueError("blob writer already finished")
        self._done = True
        digest = Digest(self._hash.digest())
        target = self._store._blob_file(digest)
        try:
            if target.exists():  # already stored: skip the fsync
                os.close(self._fd)
                self._fd = -1
                os.unlink(self._path)
                return digest
            self._store._finish(self._fd, self._path, 0o444)
            self._fd = -1
            self._store._install(self._path, target)
        except BaseException:
            self._cleanup()
            raise
        return digest

    def abort(self) -> None:
        self._done = True
        self._cleanup()

    def _cleanup(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        _unlink_quiet(self._path)

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()


class _VerifyingReader(io.RawIOBase):
    """A raw reader over a blob file that hashes everything read and checks it at EOF."""

    def __init__(self, f: io.FileIO, digest: Digest) -> None:
        self._f = f
        self._digest = digest
        self._hash = hasher()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(buf)
        if n:
            self._hash.update(memoryview(buf)[:n])
        elif not self._checked and len(buf):
            self._checked = True
            actual = Digest(self._hash.digest())
            if actual != self._digest:
                raise StoreError(
                    f"blob {self._digest.hex} is corrupt: its contents hash to {actual.hex}",
                    reason="corrupt",
                )
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def _copy_fd(src: int, dst: int) -> None:
    """Copy all of ``src`` to ``dst`` inside the kernel."""
    offset = 0
    while n := os.sendfile(dst, src, offset, 1 << 30):
        offset += n


def _iter_objects(base: Path) -> Iterator[Digest]:
    for sub in sorted(os.listdir(base)):
        if len(sub) != 2 or not set(sub) <= _HEX:
            continue
        for name in os.listdir(base / sub):
            if len(name) == 64 and name.startswith(sub) and set(name) <= _HEX:
                yield Digest.from_hex(name)


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
