"""MaterializeInputs: inputs as a real directory tree of hardlinks to the store's blob files.

No file data is copied when the store has ``blob_path`` (LocalStore) and ``at`` is on the same
filesystem: every file is a hardlink to the blob (mode 0444) or its executable twin (0555). When a
link is impossible (another filesystem, EXDEV; the inode's link limit, EMLINK; a store without
blob files) the file is streamed out of the store instead and counted in ``copied``.

Hardlinks share the store's inodes, so a writable file would let a build corrupt the store.
Running as root (who ignores modes), the tree is therefore also made a read-only bind mount of
itself for the duration of the context; otherwise the 0444/0555 modes protect it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import BundleError, NotFound

log = logging.getLogger(__name__)

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MNT_DETACH = 1, 32, 4096, 2
_LINK_FALLBACK = (errno.EXDEV, errno.EMLINK, errno.EPERM)


class MaterializeInputs:
    """Input provider ``materialize`` (see module docstring).

    ``readonly_mount``: None (default) = bind-mount the tree read-only when running as root.
    After each ``provide``, ``linked``/``copied`` count the files hardlinked/copied.
    """

    name = "materialize"

    def __init__(self, *, readonly_mount: bool | None = None) -> None:
        self.readonly_mount = os.geteuid() == 0 if readonly_mount is None else readonly_mount
        self.linked = 0
        self.copied = 0

    @contextlib.contextmanager
    def provide(self, store: Store, inputs: Mapping[str, Node], at: Path) -> Iterator[None]:
        """Populate the empty directory ``at``; remove everything again on exit."""
        at = Path(at)
        check_empty(at)
        self.linked = self.copied = 0
        mounted = False
        try:
            builder = _Builder(store, self)
            for name, node in inputs.items():
                builder.make(os.path.join(os.fsencode(at), os.fsencode(name)), node)
            if self.readonly_mount:
                _bind_readonly(at)
                mounted = True
            yield
        finally:
            try:
                if mounted:
                    _umount(at)
            finally:
                _clear(at)


class _Builder:
    def __init__(self, store: Store, counts: MaterializeInputs) -> None:
        self.store = store
        self.counts = counts
        self.blob_path = getattr(store, "blob_path", None)
        self.dirs: dict[Digest, Directory] = {}

    def make(self, path: bytes, node: Node) -> None:
        if isinstance(node, SymlinkNode):
            os.symlink(node.target, path)
        elif isinstance(node, FileNode):
            self._file(path, node)
        else:
            directory = self._directory(node, path)
            os.mkdir(path, 0o755)
            for name, child in directory:
                self.make(os.path.join(path, name), child)
            os.chmod(path, 0o555)

    def _directory(self, node: DirectoryNode, path: bytes) -> Directory:
        directory = self.dirs.get(node.digest)
        if directory is None:
            directory = self.store.get_directory(node.digest)
            if directory is None:
                raise NotFound(
                    f"input {os.fsdecode(path)}: directory {node.digest} missing from the store"
                )
            self.dirs[node.digest] = directory
        return directory

    def _file(self, path: bytes, node: FileNode) -> None:
        src = self.blob_path(node.digest, node.executable) if self.blob_path else None
        if src is not None:
            try:
                os.link(src, path)
                self.counts.linked += 1
                return
            except OSError as e:
                if e.errno not in _LINK_FALLBACK:
                    raise
                if self.counts.copied == 0:
                    log.info("cannot hardlink %s (%s): copying inputs", src, os.strerror(e.errno))
        f = self.store.open_blob(node.digest)
        if f is None:
            raise NotFound(f"input {os.fsdecode(path)}: blob {node.digest} missing from the store")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with f:
                while chunk := f.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o555 if node.executable else 0o444)
        finally:
            os.close(fd)
        self.counts.copied += 1


def check_empty(at: Path) -> None:
    """Raise BundleError unless ``at`` is an existing empty directory."""
    try:
        entries = os.listdir(at)
    except OSError as e:
        raise BundleError(f"inputs directory {at}: {e.strerror}") from e
    if entries:
        raise BundleError(f"inputs directory {at} is not empty ({len(entries)} entries)")


def _clear(at: Path) -> None:
    """Remove everything under ``at`` (never chmod files: they are the store's inodes)."""
    for entry in os.listdir(at):
        path = os.path.join(at, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            for dirpath, _dirs, _files in os.walk(path):
                os.chmod(dirpath, 0o700)
            _rmtree(path)
        else:
            os.unlink(path)


def _rmtree(path: str) -> None:
    with os.scandir(path) as it:
        entries = list(it)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            _rmtree(e.path)
        else:
            os.unlink(e.path)
    os.rmdir(path)


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library (loaded once: a CDLL costs a dlopen and attribute lookups)."""
    return ctypes.CDLL(None, use_errno=True)


def _bind_readonly(at: Path) -> None:
    """Make ``at`` a read-only bind mount of itself."""
    libc, target = _libc(), os.fsencode(at)
    if libc.mount(target, target, None, _MS_BIND, None) != 0:
        e = ctypes.get_errno()
        raise BundleError(f"cannot bind-mount inputs {at} read-only: {os.strerror(e)}")
    if libc.mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) != 0:
        e = ctypes.get_errno()
        _umount(at)
        raise BundleError(f"cannot remount inputs {at} read-only: {os.strerror(e)}")


def _umount(at: Path) -> None:
    unmount(os.path.realpath(at), lazy=False)


def unmount(at: str, *, lazy: bool) -> None:
    """Unmount ``at`` (lazily if asked, or if busy); as non-root with ``fusermount -u``."""
    if os.geteuid() == 0:
        libc, target = _libc(), os.fsencode(at)
        if libc.umount2(target, _MNT_DETACH if lazy else 0) == 0 or lazy:
            return
        if ctypes.get_errno() == errno.EBUSY and libc.umount2(target, _MNT_DETACH) == 0:
            return
        raise BundleError(f"cannot unmount {at}: {os.strerror(ctypes.get_errno())}")
    tool = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
    done = subprocess.run([tool, "-u", *(["-z"] if lazy else []), at], capture_output=True)
    if done.returncode and not lazy:
        subprocess.run([tool, "-u", "-z", at], capture_output=True)


def mount_at(at: Path | str) -> tuple[str, str] | None:
    """``(fstype, "major:minor")`` of the topmost mount exactly at ``at``, or None.

    ``at`` must be a resolved path (no symlinks): this only reads /proc/self/mountinfo and never
    touches ``at`` itself, so a hung filesystem mounted there cannot block it.
    """
    real = os.fsencode(os.path.abspath(at))
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields, _, rest = line.partition(b" - ")
            parts = fields.split(b" ")
            if _unescape(parts[4]) == real:
                found = (rest.split(b" ", 1)[0].decode(), parts[2].decode())
    return found


def _unescape(field: bytes) -> bytes:
    r"""Undo mountinfo's octal escapes (``\040`` for space, etc.)."""
    if b"\\" not in field:
        return field
    out, i = bytearray(), 0
    while i < len(field):
        if field[i] == 0x5C and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
