"""The FUSE operations behind FuseInputs: a castore tree as a read-only filesystem.

Runs inside the forked FUSE server (see fuse_inputs). Path-based mfusepy API; directories are
fetched from the store when a path through them is resolved, file data on ``read()``. Store
problems fail the syscall with EIO and are reported to the parent through ``report_fd``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from stat import S_IFDIR, S_IFLNK, S_IFREG
from typing import Any, BinaryIO

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import StoreError

MTIME_NS = 1_000_000_000  # mtime 1, as tvix
MAX_REPORTS = 20
_ENC = ("utf-8", "surrogateescape")  # how mfusepy turns path bytes into str


class Handle:
    """An open file: a descriptor for ``pread``, or a store stream read under a lock."""

    def __init__(self, digest: Digest, fd: int = -1, stream: BinaryIO | None = None) -> None:
        self.digest = digest
        self.fd = fd
        self.stream = stream
        self.pos = 0
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        if self.stream is not None:
            self.stream.close()


class InputsFS:
    """The FUSE operations (mfusepy path API) over a castore tree; runs in the child."""

    use_ns = True

    def __init__(
        self,
        error: Callable[[int], Exception],
        store: Store,
        root: dict[bytes, Node],
        dirs: dict[Digest, Directory],
    ) -> None:
        """``error(errno)`` builds mfusepy's FuseOSError; ``dirs`` seeds the directory cache."""
        self.store = store
        self.root = root
        self.dirs = dirs
        self.report_fd = -1
        self.reported = 0
        self._blob_path = getattr(store, "blob_path", None)
        self._packed = getattr(store, "packed", None)  # packed blobs are read from their pack
        self._fetch_lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        self._err = error
        self.root_nlink = 2 + sum(isinstance(n, DirectoryNode) for n in root.values())

    # -- helpers ----------------------------------------------------------------------

    def _fail(self, message: str) -> Exception:
        """Report a store problem to the parent (bounded) and return an EIO error."""
        with self._fetch_lock:
            self.reported += 1
            if self.report_fd >= 0 and self.reported <= MAX_REPORTS:
                with contextlib.suppress(OSError):
                    os.write(self.report_fd, (message.replace("\n", " ")[:500] + "\n").encode())
        return self._err(errno.EIO)

    def _directory(self, node: DirectoryNode, path: str) -> Directory:
        directory = self.dirs.get(node.digest)
        if directory is not None:
            return directory
        with self._fetch_lock:
            directory = self.dirs.get(node.digest)
            if directory is None:
                try:
                    directory = self.store.get_directory(node.digest)
                except StoreError as e:
                    problem = f"{path}: {e}"
                else:
                    problem = f"{path}: directory {node.digest} missing from the store"
                if directory is not None:
                    self.dirs[node.digest] = directory
                    return directory
        raise self._fail(problem)

    def _resolve(self, path: str) -> Node | None:
        """The node at ``path`` (None for the root); fetches only the parents' listings."""
        if path == "/":
            return None
        parts = path.encode(*_ENC).split(b"/")[1:]
        entries: Mapping[bytes, Node] = self.root
        walked = ""
        for i, part in enumerate(parts):
            node = entries.get(part)
            if node is None:
                raise self._err(errno.ENOENT)
            if i == len(parts) - 1:
                return node
            if not isinstance(node, DirectoryNode):
                raise self._err(errno.ENOTDIR)
            walked += "/" + part.decode(*_ENC)
            entries = self._directory(node, walked).entries
        raise self._err(errno.ENOENT)

    @staticmethod
    def _mode(node: Node) -> int:
        if isinstance(node, DirectoryNode):
            return S_IFDIR | 0o555
        if isinstance(node, FileNode):
            return S_IFREG | (0o555 if node.executable else 0o444)
        return S_IFLNK | 0o777

    # -- operations -------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        node = self._resolve(path)
        st = {"st_uid": 0, "st_gid": 0, "st_nlink": 1, "st_size": 0}
        st.update(st_atime=MTIME_NS, st_mtime=MTIME_NS, st_ctime=MTIME_NS)
        if node is None:
            st.update(st_mode=S_IFDIR | 0o555, st_nlink=self.root_nlink)
            return st
        st["st_mode"] = self._mode(node)
        if isinstance(node, DirectoryNode):
            entries = self._directory(node, path).entries.values()
            st["st_nlink"] = 2 + sum(isinstance(n, DirectoryNode) for n in entries)
        elif isinstance(node, FileNode):
            st.update(st_size=node.size, st_blocks=(node.size + 511) // 512)
        else:
            st["st_size"] = len(node.target)
        return st

    def readdir(self, path: str, fh: int) -> Iterator[Any]:
        node = self._resolve(path)
        if node is None:
            entries: Mapping[bytes, Node] = self.root
        elif isinstance(node, DirectoryNode):
            entries = self._directory(node, path).entries
        else:
            raise self._err(errno.ENOTDIR)
        yield from (".", "..")
        for name, child in entries.items():
            yield name.decode(*_ENC), {"st_mode": self._mode(child)}, 0

    def readlink(self, path: str) -> str:
        node = self._resolve(path)
        if not isinstance(node, SymlinkNode):
            raise self._err(errno.EINVAL)
        return node.target.decode(*_ENC)

    def open(self, path: str, flags: int) -> int:
        node = self._resolve(path)
        if not isinstance(node, FileNode):
            raise self._err(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise self._err(errno.EROFS)
        if node.size == 0:
            handle = Handle(node.digest)
        elif self._blob_path is not None and not (
                self._packed is not None and self._packed(node.digest) is not None):
            blob = self._blob_path(node.digest)
            if blob is None:
                raise self._fail(f"{path}: blob {node.digest} missing from the store")
            handle = Handle(node.digest, fd=os.open(blob, os.O_RDONLY | os.O_CLOEXEC))
        else:
            stream = self.store.open_blob(node.digest)
            if stream is None:
                raise self._fail(f"{path}: blob {node.digest} missing from the store")
            handle = Handle(node.digest, stream=stream)
        fh = next(self._ids)
        self._handles[fh] = handle
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        h = self._handles[fh]
        try:
            if h.fd >= 0:
                return os.pread(h.fd, size, offset)
            if h.stream is None:
                return b""
            with h.lock:
                return self._read_stream(h, size, offset)
        except (StoreError, OSError) as e:
            raise self._fail(f"{path}: reading blob {h.digest}: {e}") from e

    def _read_stream(self, h: Handle, size: int, offset: int) -> bytes:
        assert h.stream is not None
        if offset != h.pos:
            if h.stream.seekable():
                h.stream.seek(offset)
            else:
                if offset < h.pos:  # cannot rewind: reopen
                    h.stream.close()
                    h.stream = self.store.open_blob(h.digest)
                    if h.stream is None:
                        raise StoreError(f"blob {h.digest} vanished from the store")
                    h.pos = 0
                while h.pos < offset and (skip := h.stream.read(min(offset - h.pos, 1 << 20))):
                    h.pos += len(skip)
            h.pos = offset
        data = h.stream.read(size)
        h.pos += len(data)
        return data

    def release(self, path: str, fh: int) -> int:
        h = self._handles.pop(fh, None)
        if h is not None:
            h.close()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}
