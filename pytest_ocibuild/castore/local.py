"""LocalStore: a castore in a directory, safe for many concurrent writer processes.

Layout under ``root``::

    blobs/<2 hex>/<64 hex>      blob contents, mode 0444
    blobs/<2 hex>/<64 hex>.x    0555 twin, made on demand by ``blob_path(executable=True)``
    directories/<2 hex>/<64 hex>  canonical proto bytes of a Directory
    packs/<id>.pack             small blobs and directories written inside a ``batch()``, with
                                their index (see ``pack.py``)
    tmp/                        staging files, one unique name per writer (fallback only)

Every object is written to its own unnamed staging file (``O_TMPFILE`` in ``tmp/``, same
filesystem), then linked into place through ``/proc/self/fd`` (``linkat``): one directory
update per object, and nothing is left behind by a killed writer, since an unlinked inode
vanishes with its last descriptor. Where ``O_TMPFILE`` is refused (or ``tmpfile=False``) a
named staging file ``tmp/<kind>.<pid>-<random>.<n>`` is renamed into place instead. With
``direct=True`` (or ``OCIBUILD_DIRECT=1``) blobs of 64 KiB or more are written with
``O_DIRECT`` where the filesystem allows (``direct.py``), bypassing the page cache: that keeps
CPU and page cache free, but ties a write to the device's speed, which here (about 650 MB/s)
made ingesting large files twice as slow as buffered writes, so it is off by default.
Objects are content-addressed: a link that finds the object already there keeps it if its
size matches (else renames a named copy over it), a rename over an existing object replaces
it with identical bytes, and a concurrent writer of the same object can never observe a
missing staging file (the race Nixery had with a shared ``staging/<hash>`` name). Reads
verify digests. Inside ``batch()`` small blobs and directories go into packs instead
(``pack.py``); everything above holds for them too.

Durability: like ``nix-store --add``, object contents are not fsynced by default. A crashed
or killed process never loses data (it is in the page cache, or for ``O_DIRECT`` writes
already on the device), and the link or rename makes an object appear whole or not at all. Only a
power loss or kernel crash can leave an object truncated or empty under its final name; such
an object is never trusted: writers re-store any object whose size differs from the one they
are writing, ``has_blob`` treats an empty file as absent unless it is the empty blob, and
every read verifies the digest (``store verify`` finds the rest). ``fsync=True`` or
``OCIBUILD_FSYNC=1`` fsyncs every object before its link or rename.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pytest_ocibuild.castore.digest import Digest, hasher
from pytest_ocibuild.castore.direct import DirectWriter, open_direct
from pytest_ocibuild.castore.local_files import (
    VerifyingReader,
    copy_fd,
    file_size,
    iter_objects,
    link_into,
    present,
    unlink_quiet,
)
from pytest_ocibuild.castore.local_writer import LocalWriter
from pytest_ocibuild.castore.nodes import Directory
from pytest_ocibuild.castore.pack import BLOB, DIRECTORY, Entry, PackIndex, PackWriter, read_entry
from pytest_ocibuild.errors import StoreError

_DIRECT_MIN = 64 << 10  # blobs from this size on are written with O_DIRECT (see direct.py)
_STAGING_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
# what open(O_TMPFILE) fails with where unsupported: by the filesystem, or by old kernels
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
_PROC_FD = "/proc/self/fd"
_TRUE = frozenset({"1", "true", "yes", "on"})


def fsync_default() -> bool:
    """Whether stores fsync objects when not told: ``OCIBUILD_FSYNC=1`` (default off)."""
    return os.environ.get("OCIBUILD_FSYNC", "").strip().lower() in _TRUE


def direct_default() -> bool:
    """Whether stores write large blobs with O_DIRECT when not told: ``OCIBUILD_DIRECT=1``."""
    return os.environ.get("OCIBUILD_DIRECT", "").strip().lower() in _TRUE


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
    ``tmpfile=False`` always uses named staging files (what filesystems without ``O_TMPFILE``
    get); ``self.tmpfile`` tells which kind is in use. ``direct`` writes blobs of 64 KiB or
    more with O_DIRECT (default: ``direct_default()``, off unless ``OCIBUILD_DIRECT=1``).
    """

    def __init__(
        self, root: Path | str, *, fsync: bool | None = None, tmpfile: bool = True,
        direct: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync_default() if fsync is None else fsync
        self.tmpfile = tmpfile and hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD)
        base = os.fspath(self.root)
        self._blobs = os.path.join(base, "blobs")
        self._dirs = os.path.join(base, "directories")
        self._tmp = os.path.join(base, "tmp")
        self._packs_dir = os.path.join(base, "packs")
        self.packs = PackIndex(self._packs_dir)
        self._made: set[str] = set()
        self._direct = direct_default() if direct is None else direct  # off once refused
        subs = (self._blobs, self._dirs, self._packs_dir, self._tmp)
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

    def _staging_out(self, kind: str, direct: bool = True) -> tuple[int, str, DirectWriter]:
        """Create a fresh staging file no other writer can share; return (fd, path, writer).

        The file is unnamed (``O_TMPFILE``, path ``""``) where the filesystem allows, else named
        ``<kind>.<pid>-<random>.<counter>`` (re-randomised after fork) and created with O_EXCL.
        The writer uses O_DIRECT if ``direct`` and the filesystem can.
        """
        direct = direct and self._direct
        if self.tmpfile:
            try:
                return self._open(self._tmp, _TMPFILE_FLAGS, direct, "")
            except StoreError as e:
                if not isinstance(e.__cause__, OSError) or e.__cause__.errno not in _NO_TMPFILE:
                    raise
                self.tmpfile = False  # e.g. EOPNOTSUPP: this filesystem has no O_TMPFILE
        while True:
            try:
                return self._open(self._staging_name(kind), _STAGING_FLAGS, direct, None)
            except FileExistsError:  # pragma: no cover - only with a colliding random token
                continue

    def _staging_name(self, kind: str) -> str:
        return f"{self._tmp}/{kind}.{_identity.token}.{next(_identity.counter)}"

    def _open(
        self, path: str, flags: int, direct: bool, name: str | None
    ) -> tuple[int, str, DirectWriter]:
        """Open a staging file at ``path`` (``name``: what to report, None for ``path``)."""
        try:
            if direct:
                fd, self._direct = open_direct(path, flags, 0o600)
                return fd, path if name is None else name, DirectWriter(fd, self._direct)
            fd = os.open(path, flags, 0o600)
            return fd, path if name is None else name, DirectWriter(fd, False)
        except FileExistsError:
            raise
        except OSError as e:
            raise StoreError(f"{path}: cannot create staging file: {e.strerror}") from e

    def _seal(self, fd: int, mode: int) -> None:
        """chmod and (if enabled) fsync a finished staging file."""
        os.fchmod(fd, mode)
        if self.fsync:
            os.fsync(fd)

    def _publish(self, fd: int, staging: str, target: str, size: int) -> None:
        """Give the sealed staging file ``fd`` (named ``staging``, unnamed if ``""``) the name
        ``target``; an object of ``size`` bytes already there is kept."""
        if staging:
            self._install(staging, target)
            return
        src = f"{_PROC_FD}/{fd}"
        try:
            try:
                link_into(src, target)
            except FileNotFoundError:  # first object of its blobs/<2 hex>/ directory
                os.makedirs(os.path.dirname(target), exist_ok=True)
                link_into(src, target)
        except FileExistsError:
            if file_size(target) == size:
                return  # the same object, stored before (content addressing)
            # truncated by a power loss: name our copy and rename it over, atomically
            staging = self._staging_name("repair")
            link_into(src, staging)
            try:
                self._install(staging, target)
            except BaseException:
                unlink_quiet(staging)
                raise

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

    def _store_with(self, kind: str, target: str, size: int, direct: bool,
                    fill: Callable[[DirectWriter], None], mode: int = 0o444) -> None:
        """Create a staging file, ``fill`` it through its writer, seal and publish it."""
        fd, staging, out = self._staging_out(kind, direct)
        try:
            try:
                fill(out)
                out.close()
            finally:
                out.release()
            self._seal(fd, mode)
            self._publish(fd, staging, target, size)
        except BaseException:
            if staging:
                unlink_quiet(staging)
            raise
        finally:
            os.close(fd)

    # -- blobs -------------------------------------------------------------------------

    def has_blob(self, digest: Digest, size: int | None = None, *,
                 refresh: bool = True) -> bool:
        """True if the blob is present and plausible (not re-hashed): packed, or as a file.

        With ``size`` it must have exactly that size; without, an empty file only counts for
        the empty blob (what a power loss leaves of an unsynced write). ``refresh=False``
        does not look for packs published since this store object last looked.
        """
        if self._packed(digest, size, False) or present(self._blob_file(digest), size, digest):
            return True
        return refresh and self._packed(digest, size, True)

    def batch(self) -> PackWriter:
        """A writer that packs small blobs until it is committed (see ``pack.py``)."""
        return PackWriter(self)

    def packed(self, digest: Digest) -> Entry | None:
        """(pack id, offset, size) if the blob is in a pack."""
        return self.packs.get(digest)

    def _packed(self, digest: Digest, size: int | None, refresh: bool,
                kind: int = BLOB) -> bool:
        entry = self.packs.get(digest, kind, refresh=refresh)
        return entry is not None and (size is None or entry[2] == size)

    def _read_packed(self, digest: Digest, kind: int = BLOB) -> bytes | None:
        """A packed object's verified bytes, or None if no pack holds it."""
        entry = self.packs.get(digest, kind)
        data = None if entry is None else read_entry(self._packs_dir, entry, digest, kind)
        if data is None and entry is not None and self.packs.refresh():
            entry = self.packs.get(digest, kind, refresh=False)  # gc removed it: repacked?
            data = None if entry is None else read_entry(self._packs_dir, entry, digest, kind)
        return data

    def put_bytes(self, data: bytes | bytearray | memoryview) -> Digest:
        """Store a blob held in memory and return its digest (the fast path for small files)."""
        digest = Digest(hasher(data).digest())
        self._put_known(digest, data)
        return digest

    def _put_known(self, digest: Digest, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` (whose digest is ``digest``) unless a file of its size is there."""
        target = self._blob_file(digest)
        if self._packed(digest, len(data), False) or present(target, len(data), digest):
            return
        try:
            self._store_with("blob", target, len(data), len(data) >= _DIRECT_MIN,
                             lambda out: out.write(data))
        except OSError as e:
            raise StoreError(f"blob {digest.hex}: cannot store: {e.strerror}") from e

    def open_blob(self, digest: Digest) -> BinaryIO | None:
        """A buffered reader that verifies the blob's digest when it reaches EOF (a packed
        blob, which is small, is read and verified at once)."""
        try:
            f = open(self._blob_file(digest), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            data = self._read_packed(digest)
            return None if data is None else io.BytesIO(data)
        return io.BufferedReader(VerifyingReader(f, digest), buffer_size=1 << 20)

    def blob_writer(self) -> LocalWriter:
        return LocalWriter(self)

    def blob_path(self, digest: Digest, executable: bool = False) -> Path | None:
        """On-disk path of the blob (for hardlinking), or None if absent.

        The plain blob is mode 0444; ``executable=True`` returns a 0555 twin ``<hex>.x``
        (one inode cannot carry two modes), created on demand race-free. A packed blob is
        unpacked into its file first (verified). Contents of files are not re-verified here.
        """
        plain = Path(self._blob_file(digest))
        if not present(str(plain), None, digest):
            data = self._read_packed(digest)
            if data is None:
                return None
            self._store_with("blob", str(plain), len(data), False, lambda out: out.write(data))
        if not executable:
            return plain
        twin = plain.with_name(plain.name + ".x")
        if twin.exists():
            return twin
        with open(plain, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            self._store_with("exec", str(twin), size, False,
                             lambda out: copy_fd(src.fileno(), out.fd), 0o555)
        return twin

    def iter_blobs(self) -> Iterator[Digest]:
        """Every blob digest present, loose or packed (twins excluded), in no particular
        order."""
        return self._iter_kind(self._blobs, BLOB)

    def _iter_kind(self, base: str, kind: int) -> Iterator[Digest]:
        """Loose objects under ``base``, then packed objects of ``kind`` not seen loose."""
        seen: set[bytes] = set()
        for digest in iter_objects(base):
            seen.add(digest.raw)
            yield digest
        self.packs.refresh()
        for raw in self.packs.digests(kind):
            if raw not in seen:
                yield Digest(raw)

    # -- directories -------------------------------------------------------------------

    def has_directory(self, digest: Digest, size: int | None = None, *,
                      refresh: bool = True) -> bool:
        """True if the directory is present, packed or as a file (see ``has_blob``)."""
        if self._packed(digest, size, False, DIRECTORY) or present(
                self._dir_file(digest), size, digest):
            return True
        return refresh and self._packed(digest, size, True, DIRECTORY)

    def get_directory(self, digest: Digest) -> Directory | None:
        try:
            with open(self._dir_file(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            packed = self._read_packed(digest, DIRECTORY)
            if packed is None:
                return None
            data = packed
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
        if self._packed(digest, len(data), False, DIRECTORY) or present(
                target, len(data), digest):
            return digest
        self._store_with("dir", target, len(data), False, lambda out: out.write(data))
        return digest

    def iter_directories(self) -> Iterator[Digest]:
        """Every directory digest present, loose or packed, in no particular order."""
        return self._iter_kind(self._dirs, DIRECTORY)

    def staging_files(self) -> list[str]:
        """Names currently in ``tmp/`` (leftovers of crashed writers, or writes in flight)."""
        return sorted(os.listdir(self._tmp))
