"""LocalStore: a castore in a directory, safe for many concurrent writer processes.

Layout under ``root``::

    blobs/<2 hex>/<64 hex>      blob contents, mode 0444
    blobs/<2 hex>/<64 hex>.x    0555 twin, made on demand by ``blob_path(executable=True)``
    directories/<2 hex>/<64 hex>  canonical proto bytes of a Directory
    tmp/                        staging files, one unique name per writer

Every object is written to its own staging file in ``tmp/`` (same filesystem), then renamed
into place; blobs of 64 KiB or more are written with ``O_DIRECT`` where the filesystem allows
(``direct.py``), bypassing the page cache. Objects are content-addressed, so a rename over an
existing object replaces it with identical bytes and a concurrent writer of the same object
can never observe a missing staging file (the race Nixery had with a shared
``staging/<hash>`` name). Reads verify digests.

Durability: like ``nix-store --add``, object contents are not fsynced by default. A crashed
or killed process never loses data (it is in the page cache, or for ``O_DIRECT`` writes
already on the device), and the rename makes an object appear whole or not at all. Only a
power loss or kernel crash can leave an object truncated or empty under its final name; such
an object is never trusted: writers re-store any object whose size differs from the one they
are writing, ``has_blob`` treats an empty file as absent unless it is the empty blob, and
every read verifies the digest (``store verify`` finds the rest). ``fsync=True`` or
``OCIBUILD_FSYNC=1`` fsyncs every object before its rename.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from pytest_ocibuild.castore.digest import EMPTY, Digest, hasher
from pytest_ocibuild.castore.direct import DirectWriter, open_direct
from pytest_ocibuild.castore.nodes import Directory
from pytest_ocibuild.errors import StoreError

_HEX = frozenset("0123456789abcdef")
_LAZY = 1 << 20  # blobs up to this size are buffered before any staging file exists
_DIRECT_MIN = 64 << 10  # blobs from this size on are written with O_DIRECT (see direct.py)
_STAGING_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_TRUE = frozenset({"1", "true", "yes", "on"})


def fsync_default() -> bool:
    """Whether stores fsync objects when not told: ``OCIBUILD_FSYNC=1`` (default off)."""
    return os.environ.get("OCIBUILD_FSYNC", "").strip().lower() in _TRUE


class _Identity:
    """This process's staging-name prefix; renewed in a forked child."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.token = f"{os.getpid()}-{os.urandom(6).hex()}"
        self.counter = itertools.count()  # next() is atomic under the GIL


_identity = _Identity()
os.register_at_fork(after_in_child=_identity.renew)


class LocalStore:
    """A content-addressed store on the local filesystem (see module docstring for layout).

    ``fsync`` makes every object durable before its name appears (default: ``fsync_default()``,
    off unless ``OCIBUILD_FSYNC=1``; see the module docstring for what is safe without it).
    """

    def __init__(self, root: Path | str, *, fsync: bool | None = None) -> None:
        self.root = Path(root)
        self.fsync = fsync_default() if fsync is None else fsync
        base = os.fspath(self.root)
        self._blobs = os.path.join(base, "blobs")
        self._dirs = os.path.join(base, "directories")
        self._tmp = os.path.join(base, "tmp")
        self._made: set[str] = set()
        self._direct = True  # until the filesystem refuses O_DIRECT
        subs = (self._blobs, self._dirs, self._tmp)
        if all(os.path.isdir(sub) for sub in subs):
            return
        # idempotent and tolerant of concurrent creators (exist_ok at every level)
        for sub in subs:
            os.makedirs(sub, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths and staging -------------------------------------------------------------

    def _blob_file(self, digest: Digest) -> str:
        h = digest.raw.hex()
        return f"{self._blobs}/{h[:2]}/{h}"

    def _dir_file(self, digest: Digest) -> str:
        h = digest.raw.hex()
        return f"{self._dirs}/{h[:2]}/{h}"

    def _staging(self, kind: str) -> tuple[int, str]:
        """Create a fresh staging file no other writer can share; return (fd, path).

        Names are ``<kind>.<pid>-<random>.<counter>`` (re-randomised after fork) and created
        with O_EXCL, so two writers can never own the same staging file.
        """
        fd, path, _ = self._staging_out(kind, direct=False)
        return fd, path

    def _staging_out(self, kind: str, direct: bool = True) -> tuple[int, str, DirectWriter]:
        """Like ``_staging``, with a writer that uses O_DIRECT where the filesystem can."""
        while True:
            path = f"{self._tmp}/{kind}.{_identity.token}.{next(_identity.counter)}"
            try:
                if direct and self._direct:
                    fd, self._direct = open_direct(path, _STAGING_FLAGS, 0o600)
                    return fd, path, DirectWriter(fd, self._direct)
                fd = os.open(path, _STAGING_FLAGS, 0o600)
                return fd, path, DirectWriter(fd, False)
            except FileExistsError:  # pragma: no cover - only with a colliding random token
                continue
            except OSError as e:
                raise StoreError(f"{path}: cannot create staging file: {e.strerror}") from e

    def _install(self, staging: str, target: str) -> None:
        """Rename a finished staging file to ``target``.

        If ``target`` already exists the rename atomically replaces it with identical bytes
        (content addressing), so concurrent writers of one object all succeed.
        """
        parent = os.path.dirname(target)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        os.rename(staging, target)

    def _finish(self, fd: int, mode: int) -> None:
        """chmod, fsync (unless disabled) and close a staging file."""
        try:
            os.fchmod(fd, mode)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- blobs -------------------------------------------------------------------------

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """True if the blob's file is present and plausible (not re-hashed).

        With ``size`` the file must have exactly that size; without, an empty file only counts
        for the empty blob (what a power loss leaves of an unsynced write).
        """
        return _present(self._blob_file(digest), size, digest)

    def put_bytes(self, data: bytes | bytearray | memoryview) -> Digest:
        """Store a blob held in memory and return its digest (the fast path for small files)."""
        digest = Digest(hasher(data).digest())
        self._put_known(digest, data)
        return digest

    def _put_known(self, digest: Digest, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` (whose digest is ``digest``) unless a file of its size is there."""
        target = self._blob_file(digest)
        if _present(target, len(data), digest):
            return
        fd, staging, out = self._staging_out("blob", direct=len(data) >= _DIRECT_MIN)
        try:
            try:
                out.write(data)
                out.close()
            finally:
                out.release()
            self._finish(fd, 0o444)
            fd = -1
            self._install(staging, target)
        except BaseException as e:
            if fd >= 0:
                os.close(fd)
            _unlink_quiet(staging)
            if isinstance(e, OSError):
                raise StoreError(f"blob {digest.hex}: cannot store: {e.strerror}") from e
            raise

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
        plain = Path(self._blob_file(digest))
        if not _present(str(plain), None, digest):
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
            self._finish(fd, 0o555)
            fd = -1
            self._install(staging, str(twin))
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
            with open(self._dir_file(digest), "rb") as f:
                data = f.read()
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
        if _present(target, len(data), digest):
            return digest
        fd, staging = self._staging("dir")
        try:
            _write_all(fd, data)
            self._finish(fd, 0o444)
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
        if self._fd < 0 and len(self._head) + len(chunk) <= _LAZY:
            self._head += chunk
            return
        try:
            self._spill()
            assert self._out is not None
            self._out.write(chunk)
        except OSError as e:
            self.abort()
            raise StoreError(f"{self._path}: cannot write blob: {e.strerror}") from e

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
        if self._fd < 0:
            self._fd, self._path, self._out = self._store._staging_out("blob")
            self._out.write(self._head)
            self._head = bytearray()

    def commit(self) -> Digest:
        if self._done:
            raise ValueError("blob writer already finished")
        self._done = True
        digest = Digest(self._hash.digest())
        if self._fd < 0:  # small: still in memory, no staging file yet
            head, self._head = self._head, bytearray()
            self._store._put_known(digest, head)
            return digest
        target = self._store._blob_file(digest)
        try:
            if _present(target, self._size, digest):  # already stored: nothing to write
                self._cleanup()
                return digest
            assert self._out is not None
            self._out.close()
            fd, self._fd = self._fd, -1
            self._store._finish(fd, 0o444)
            self._store._install(self._path, target)
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


def _present(path: str, size: int | None, digest: Digest) -> bool:
    """Whether an object file at ``path`` can stand for ``digest`` (see ``has_blob``)."""
    try:
        actual = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if size is not None:
        return actual == size
    return actual > 0 or digest == EMPTY


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_fd(src: int, dst: int) -> None:
    """Copy all of ``src`` to ``dst`` inside the kernel."""
    offset = 0
    while n := os.sendfile(dst, src, offset, 1 << 30):
        offset += n


def _iter_objects(base: str) -> Iterator[Digest]:
    for sub in sorted(os.listdir(base)):
        if len(sub) != 2 or not set(sub) <= _HEX:
            continue
        for name in os.listdir(os.path.join(base, sub)):
            if len(name) == 64 and name.startswith(sub) and set(name) <= _HEX:
                yield Digest.from_hex(name)


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
