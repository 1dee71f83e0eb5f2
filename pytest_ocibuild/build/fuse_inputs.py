"""FuseInputs: inputs served read-only over FUSE, straight from the store, resolved lazily.

The filesystem runs in a forked child process (its own session), not in a thread: a hung or
crashed filesystem can then be killed without taking the caller's interpreter with it, and
libfuse's process-wide signal handlers stay out of the caller. The child dies with its parent
(``PR_SET_PDEATHSIG``, SIGTERM makes libfuse unmount). Because the child is forked, it sees the
store as it was at ``provide()``; stores must not rely on descriptors shared with the parent.

Semantics follow tvix's castore FUSE: files 0444 (0555 if executable), directories 0555, all owned
by root, mtime 1. Directories are fetched from the store only when looked up; file data is read on
``read()`` (a store's blob file with ``pread`` when it has ``blob_path``, else an ``open_blob``
stream kept per open file).

Missing objects: top-level inputs are checked before mounting (StoreError). A directory or blob
that turns out to be missing (or corrupt) later fails that syscall with EIO; the child reports it
and leaving the context raises StoreError naming it (or, if the block raised, adds a note).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from stat import S_IFDIR, S_IFLNK, S_IFREG
from typing import Any, BinaryIO

from pytest_ocibuild.build.materialize import mount_at
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import BundleError, NotFound, RuntimeUnavailable, StoreError

_MTIME_NS = 1_000_000_000  # mtime 1, as tvix
_CACHE_SECONDS = 3600.0  # contents are immutable: let the kernel cache entries and attributes
_MAX_REPORTS = 20
_ENC = ("utf-8", "surrogateescape")  # how mfusepy turns path bytes into str


def check_fuse(*, allow_other: bool = True) -> Any:
    """Return the ``mfusepy`` module, or raise RuntimeUnavailable naming what is missing."""
    if not os.path.exists("/dev/fuse"):
        raise RuntimeUnavailable("FUSE inputs need /dev/fuse: load the fuse kernel module")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise RuntimeUnavailable("FUSE inputs need read/write access to /dev/fuse")
    try:
        import mfusepy
    except (OSError, ImportError) as e:
        raise RuntimeUnavailable(f"FUSE inputs need libfuse: install fuse (libfuse2) ({e})") from e
    if os.geteuid() != 0:
        if not (shutil.which("fusermount") or shutil.which("fusermount3")):
            raise RuntimeUnavailable("FUSE inputs need fusermount: install fuse3 (or fuse)")
        if allow_other and not _user_allow_other():
            raise RuntimeUnavailable("FUSE inputs need 'user_allow_other' in /etc/fuse.conf")
    return mfusepy


def _user_allow_other() -> bool:
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        return False
    return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines)


class FuseInputs:
    """Input provider ``fuse`` (see module docstring).

    ``allow_other`` lets other users (the container's mapped uid) read the mount.
    ``nothreads`` (default True) runs libfuse's single-threaded loop: every callback needs the GIL
    anyway, and benchmarks/inputs.py measures it about twice as fast as the multi-threaded loop,
    also with parallel readers; pass False when a slow store should not stall other requests.
    ``mount_timeout`` bounds the wait for the mount to go live, ``stop_timeout`` the wait for
    the server to exit after unmounting (then it is signalled).
    """

    name = "fuse"

    def __init__(
        self,
        *,
        allow_other: bool = True,
        nothreads: bool = True,
        mount_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.allow_other = allow_other
        self.nothreads = nothreads
        self.mount_timeout = mount_timeout
        self.stop_timeout = stop_timeout

    @contextlib.contextmanager
    def provide(self, store: Store, inputs: Mapping[str, Node], at: Path) -> Iterator[None]:
        """Mount ``inputs`` at the empty directory ``at``; unmount on exit."""
        fuse = check_fuse(allow_other=self.allow_other)
        at = Path(at)
        try:
            if os.listdir(at):
                raise BundleError(f"inputs directory {at} is not empty")
        except OSError as e:
            raise BundleError(f"inputs directory {at}: {e.strerror}") from e
        root = {os.fsencode(name): node for name, node in inputs.items()}
        dirs = _prefetch(store, root)
        ops = _InputsFS(fuse, store, root, dirs)
        options = dict(
            foreground=True,
            nothreads=self.nothreads,
            ro=True,
            default_permissions=True,
            allow_other=self.allow_other,
            kernel_cache=True,
            entry_timeout=_CACHE_SECONDS,
            attr_timeout=_CACHE_SECONDS,
            negative_timeout=_CACHE_SECONDS,
            fsname="ocibuild-inputs",
            subtype="ocibuild",
        )
        server = _Server(fuse, ops, os.path.realpath(at), options, self.stop_timeout)
        try:
            server.wait_mounted(self.mount_timeout)
        except BaseException:
            server.stop()
            raise
        try:
            yield
        except BaseException as exc:
            problems = server.stop()
            if problems:
                exc.add_note(f"FUSE inputs at {at}: " + "; ".join(problems))
            raise
        problems = server.stop()
        if problems:
            raise StoreError(f"FUSE inputs at {at}: " + "; ".join(problems))


def _prefetch(store: Store, root: Mapping[bytes, Node]) -> dict[Digest, Directory]:
    """Check the top-level inputs exist (raise NotFound); return their Directory objects."""
    dirs: dict[Digest, Directory] = {}
    for name, node in root.items():
        if isinstance(node, DirectoryNode):
            directory = store.get_directory(node.digest)
            if directory is None:
                raise NotFound(f"input {name!r}: directory {node.digest} missing from the store")
            dirs[node.digest] = directory
        elif isinstance(node, FileNode) and node.size and not store.has_blob(node.digest):
            raise NotFound(f"input {name!r}: blob {node.digest} missing from the store")
    return dirs


class _Server:
    """The forked FUSE server process and its mount."""

    def __init__(
        self, fuse: Any, ops: _InputsFS, at: str, options: dict[str, Any], stop_timeout: float
    ) -> None:
        self.at = at
        self.stop_timeout = stop_timeout
        self.stopped = False
        self.status: int | None = None
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.reports: list[str] = []
        self.stderr_tail = ""
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage does not follow it
            _child(fuse, ops, at, options, w, self.stderr.fileno(), os.getppid())
        os.close(w)
        self.pid, self.rfd = pid, r
        os.set_blocking(r, False)

    def _poll(self) -> bool:
        """Reap the child if it exited; True if it is gone."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._poll():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.rfd, 65536):
                self.reports.extend(chunk.decode(errors="replace").splitlines())

    def mounted(self) -> bool:
        entry = mount_at(self.at)
        return entry is not None and entry[0].startswith("fuse")

    def wait_mounted(self, timeout: float) -> None:
        deadline, delay = time.monotonic() + timeout, 0.001
        while not self.mounted():
            if self._poll():
                self.stop()  # reap, collect the child's reports
                why = "; ".join(self.reports) or self.stderr_tail or f"status {self.status}"
                raise RuntimeUnavailable(f"FUSE mount at {self.at} failed: {why}")
            if time.monotonic() > deadline:
                raise RuntimeUnavailable(f"FUSE mount at {self.at} not live after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def stop(self) -> list[str]:
        """Unmount, reap the child (escalating to signals), verify; return reported problems."""
        if self.stopped:
            return self.reports
        self.stopped = True
        try:
            try:
                if self.mounted():
                    _unmount(self.at, lazy=False)
                if not self._wait(self.stop_timeout):
                    os.kill(self.pid, signal.SIGTERM)  # libfuse exits its loop and unmounts
                    if not self._wait(2.0):
                        os.kill(self.pid, signal.SIGKILL)
            finally:
                if self.status is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    self.status = -signal.SIGKILL
                self._drain()
                os.close(self.rfd)
                self.stderr_tail = _tail(self.stderr)
                self.stderr.close()
        finally:
            entry = mount_at(self.at)
            if entry is not None and entry[0].startswith("fuse"):
                # the server is gone: abort the connection, detach the mount
                minor = entry[1].split(":")[1]
                with contextlib.suppress(OSError):
                    Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
                _unmount(self.at, lazy=True)
        if self.mounted():
            raise BundleError(f"FUSE inputs still mounted at {self.at} after unmounting")
        return self.reports


def _unmount(at: str, *, lazy: bool) -> None:
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(os.fsencode(at), 2 if lazy else 0) == 0:
            return
        if not lazy and ctypes.get_errno() == errno.EBUSY:
            libc.umount2(os.fsencode(at), 2)
        return
    tool = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
    done = subprocess.run([tool, "-u", *(["-z"] if lazy else []), at], capture_output=True)
    if done.returncode and not lazy:
        subprocess.run([tool, "-u", "-z", at], capture_output=True)


def _tail(f: Any) -> str:
    f.seek(0)
    lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _child(  # pragma: no cover - runs in the forked child
    fuse: Any, ops: _InputsFS, at: str, options: dict[str, Any], w: int, err: int, parent: int
) -> None:
    code = 1
    try:
        os.setsid()  # out of the caller's process group: a terminal ^C goes to the caller only
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
        os.dup2(err, 2)
        os.closerange(3, w)  # drop the caller's descriptors (e.g. files open in other mounts)
        os.closerange(w + 1, os.sysconf("SC_OPEN_MAX"))
        ops.report_fd = w
        fuse.FUSE(ops, at, **options)
        code = 0
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(w, f"fatal: {type(e).__name__}: {e}\n".encode()[:1000])
    finally:
        os._exit(code)


class _Handle:
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


class _InputsFS:
    """The FUSE operations (mfusepy path API) over a castore tree; runs in the child."""

    use_ns = True

    def __init__(
        self, fuse: Any, store: Store, root: dict[bytes, Node], dirs: dict[Digest, Directory]
    ) -> None:
        self.store = store
        self.root = root
        self.dirs = dirs
        self.report_fd = -1
        self.reported = 0
        self._blob_path = getattr(store, "blob_path", None)
        self._fetch_lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._ids = itertools.count(1)
        self._err = fuse.FuseOSError
        self.root_nlink = 2 + sum(isinstance(n, DirectoryNode) for n in root.values())

    # -- helpers ----------------------------------------------------------------------

    def _fail(self, message: str) -> Exception:
        """Report a store problem to the parent (bounded) and return an EIO error."""
        with self._fetch_lock:
            self.reported += 1
            if self.report_fd >= 0 and self.reported <= _MAX_REPORTS:
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
        st.update(st_atime=_MTIME_NS, st_mtime=_MTIME_NS, st_ctime=_MTIME_NS)
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
            handle = _Handle(node.digest)
        elif self._blob_path is not None:
            blob = self._blob_path(node.digest)
            if blob is None:
                raise self._fail(f"{path}: blob {node.digest} missing from the store")
            handle = _Handle(node.digest, fd=os.open(blob, os.O_RDONLY | os.O_CLOEXEC))
        else:
            stream = self.store.open_blob(node.digest)
            if stream is None:
                raise self._fail(f"{path}: blob {node.digest} missing from the store")
            handle = _Handle(node.digest, stream=stream)
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

    def _read_stream(self, h: _Handle, size: int, offset: int) -> bytes:
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
