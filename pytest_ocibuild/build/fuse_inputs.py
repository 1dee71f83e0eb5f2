"""FuseInputs: inputs served read-only over FUSE, straight from the store, resolved lazily.

The filesystem runs in a forked child process (its own session), not in a thread: a hung or
crashed filesystem can then be killed without taking the caller's interpreter with it, and
libfuse's process-wide signal handlers stay out of the caller. The child dies with its parent
(``PR_SET_PDEATHSIG``, SIGTERM makes libfuse unmount). Because the child is forked, it sees the
store as it was at ``provide()``; stores must not rely on descriptors shared with the parent.

Semantics follow tvix's castore FUSE: files 0444 (0555 if executable), directories 0555, all owned
by root, mtime 1. Directories are fetched from the store only when looked up; file data is read on
``read()`` (a store's blob file with ``pread`` when it has ``blob_path``, else an ``open_blob``
stream kept per open file); the operations live in fuse_fs. The mount is ``ro``,
``default_permissions`` (the kernel checks the modes) and ``allow_other`` (the container's mapped
uid must read it), with long kernel cache timeouts since contents never change.

Missing objects: top-level inputs are checked before mounting (StoreError). A directory or blob
that turns out to be missing (or corrupt) later fails that syscall with EIO; the child reports it
and leaving the context raises StoreError naming it (or, if the block raised, adds a note).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.fuse_fs import InputsFS
from pytest_ocibuild.build.materialize import check_empty, mount_at, unmount
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import BundleError, NotFound, RuntimeUnavailable, StoreError

_CACHE_SECONDS = 3600.0  # contents are immutable: let the kernel cache entries and attributes


def check_fuse(*, allow_other: bool = True) -> Any:
    """Return the ``mfusepy`` module, or raise RuntimeUnavailable naming what is missing."""
    if not os.path.exists("/dev/fuse"):
        raise RuntimeUnavailable("FUSE inputs need /dev/fuse: load the fuse kernel module")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise RuntimeUnavailable("FUSE inputs need read/write access to /dev/fuse (as root: "
                                 "chmod 0666 /dev/fuse, Debian's default)")
    try:
        import mfusepy
    except (OSError, ImportError) as e:
        raise RuntimeUnavailable(f"FUSE inputs need libfuse: install fuse (libfuse2) ({e})") from e
    if os.geteuid() != 0:
        if not (shutil.which("fusermount") or shutil.which("fusermount3")):
            raise RuntimeUnavailable("FUSE inputs need fusermount: install fuse3 (or fuse)")
        if allow_other and not _user_allow_other():
            raise RuntimeUnavailable("FUSE inputs need 'user_allow_other' in /etc/fuse.conf (as "
                                     "root: echo user_allow_other >> /etc/fuse.conf)")
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
        check_empty(at)
        root = {os.fsencode(name): node for name, node in inputs.items()}
        dirs = _prefetch(store, root)
        ops = InputsFS(fuse.FuseOSError, store, root, dirs)
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
            error = BundleError if "FUSE server exited early" in problems[-1] else StoreError
            raise error(f"FUSE inputs at {at}: " + "; ".join(problems))


def _prefetch(store: Store, root: Mapping[bytes, Node]) -> dict[Digest, Directory]:
    """Check the top-level inputs exist (raise NotFound); return their Directory objects."""
    dirs: dict[Digest, Directory] = {}
    for name, node in root.items():
        if isinstance(node, DirectoryNode):
            directory = store.get_directory(node.digest)
            if directory is None:
                raise NotFound(f"input {name!r}: directory {node.digest} missing from the store")
            dirs[node.digest] = directory
        elif (isinstance(node, FileNode) and node.size
              and not store.has_blob(node.digest, node.size)):
            raise NotFound(f"input {name!r}: blob {node.digest} missing from the store")
    return dirs


class _Server:
    """The forked FUSE server process and its mount."""

    def __init__(
        self, fuse: Any, ops: InputsFS, at: str, options: dict[str, Any], stop_timeout: float
    ) -> None:
        self.at = at
        self.stop_timeout = stop_timeout
        self.stopped = False
        self.status: int | None = None
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.reports: list[str] = []
        self.stderr_tail = ""
        r, w = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage does not follow it
            _child(fuse, ops, at, options, w, self.stderr.fileno(), parent)
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
        if self._poll():  # nobody asked it to stop
            self.reports.append(f"FUSE server exited early ({_describe(self.status)})")
        try:
            try:
                if self.mounted():
                    unmount(self.at, lazy=False)
                if not self._wait(self.stop_timeout):
                    os.kill(self.pid, signal.SIGTERM)  # libfuse exits its loop and unmounts
                    if not self._wait(2.0):
                        os.kill(self.pid, signal.SIGKILL)
            finally:
                if self.status is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    self.status = os.waitpid(self.pid, 0)[1]
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
                unmount(self.at, lazy=True)
        if self.mounted():
            raise BundleError(f"FUSE inputs still mounted at {self.at} after unmounting")
        return self.reports


def _describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _tail(f: Any) -> str:
    f.seek(0)
    lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _child(  # pragma: no cover - runs in the forked child
    fuse: Any, ops: InputsFS, at: str, options: dict[str, Any], w: int, err: int, parent: int
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
