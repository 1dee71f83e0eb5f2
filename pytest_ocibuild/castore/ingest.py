"""Move trees from the filesystem into a castore: ``ingest_path`` (castore.trees reads them back).

Ingestion follows tvix-castore's ``import::fs``: symlinks are never followed (a symlink at the
root is ingested as a symlink), a file is executable iff its owner-execute bit (0o100) is set,
as in Nix's ``dump()``, and only regular files, directories and symlinks are accepted. Files
up to ``SMALL`` bytes are read whole and stored with one write (``put_bytes`` when the store
has it); larger ones are streamed in ``CHUNK``-sized pieces, so memory stays constant.
Directories are stored bottom-up. A directory is ingested inside the store's ``batch()`` where
it has one (LocalStore: small blobs go into one pack instead of a file each), committed before
the root node is returned.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store, put_blob
from pytest_ocibuild.errors import StoreError

CHUNK = 1 << 20
SMALL = 1 << 20
INLINE = 64 << 10  # files below this size are stored by the walking thread itself
PREFETCH = 256  # large files started ahead of the walk, at most
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC



def ingest_path(store: Store, path: Path | str, *, workers: int | None = None) -> Node:
    """Store the file, directory or symlink at ``path`` and return its root node.

    The walking thread stores files under ``INLINE`` bytes itself (for them, handing work to
    threads costs more in GIL contention than it saves: a 2-CPU VM took 40% longer with two);
    larger files are read, hashed and written by ``workers`` threads (default: one per CPU, at
    most 8; ``1`` ingests everything inline) while the walk continues, started ahead of the walk
    by ``_Prefetch``. At most ``PREFETCH`` files are queued ahead and each thread holds one file
    at a time, so memory stays constant however large the tree.
    """
    p = os.fsencode(path)
    try:
        st = os.lstat(p)
    except OSError as e:
        raise StoreError(f"{os.fsdecode(p)}: cannot ingest: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        return _ingest_leaf(store, p, st.st_mode)
    if workers is None:
        # more threads than CPUs only added kernel lock contention (2-CPU VM: 8 threads took
        # 25% longer and twice the system time of 1 or 2)
        workers = min(8, os.cpu_count() or 1)
    batch = getattr(store, "batch", None)
    with batch() if batch is not None else contextlib.nullcontext(store) as sink:
        if workers <= 1:
            return _Walk(sink, None).run(p)
        with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
            prefetch = _Prefetch(sink, pool, p)
            try:
                return _Walk(sink, pool, 2 * workers, prefetch).run(p)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                prefetch.stop()


class _Slot:
    """Placeholder for a subdirectory's node until that directory has been stored."""

    __slots__ = ("node",)

    def __init__(self) -> None:
        self.node: DirectoryNode | None = None


_Entry = Node | Future[Node] | _Slot


class _Prefetch:
    """Starts the large files of a tree on the pool ahead of the walk (a thread of its own).

    It walks the tree in ``_Walk``'s order, but only lists directories and lstats files, so it
    runs far ahead: the pool (and the disk) work on large files from the start instead of from
    when the walk, busy storing small files, reaches them. At most ``PREFETCH`` started files
    wait to be claimed. The walk claims each by path; when it meets a large file that was not
    started, the prefetcher has fallen behind and stops (claim and stop are one locked step,
    so no file is ever started twice). Errors only stop it: the walk meets and reports them.
    """

    def __init__(self, store: Store, pool: ThreadPoolExecutor, top: bytes) -> None:
        self._store = store
        self._pool = pool
        self._cond = threading.Condition()
        self._ready: dict[bytes, Future[Node]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, args=(top,), daemon=True,
                                        name="ingest-prefetch")
        self._thread.start()

    def claim(self, path: bytes, *, large: bool) -> Future[Node] | None:
        """The started future for ``path``; if ``large`` and there is none, stop prefetching."""
        with self._cond:
            future = self._ready.pop(path, None)
            if future is not None:
                self._cond.notify()
            elif large:
                self._stopped = True
                self._cond.notify()
            return future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self, top: bytes) -> None:
        try:
            stack = [_scan(top)]
            while stack and not self._stopped:
                listing = stack[-1]
                if not listing:
                    stack.pop()
                    continue
                entry = listing.pop()
                if entry.is_dir(follow_symlinks=False):
                    stack.append(_scan(entry.path))
                elif (entry.is_file(follow_symlinks=False)
                      and entry.stat(follow_symlinks=False).st_size >= INLINE
                      and not self._start(entry.path)):
                    return
        except (OSError, StoreError, RuntimeError):  # RuntimeError: the pool has shut down
            return

    def _start(self, path: bytes) -> bool:
        with self._cond:
            while len(self._ready) >= PREFETCH and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            self._ready[path] = self._pool.submit(_ingest_path_file, self._store, path)
            return True


class _Walk:
    """Post-order walk with an explicit stack (no recursion limit on deep trees).

    Large regular files go to the pool; a finished listing waits in ``pending`` (FIFO, so
    children are always stored before their parents) until its files are done.
    """

    def __init__(self, store: Store, pool: ThreadPoolExecutor | None, limit: int = 0,
                 prefetch: _Prefetch | None = None) -> None:
        self.store = store
        self.pool = pool
        self.limit = limit
        self.prefetch = prefetch
        self.inflight: deque[Future[Node]] = deque()
        self.pending: deque[tuple[dict[bytes, _Entry], _Slot]] = deque()

    def run(self, top: bytes) -> DirectoryNode:
        root = _Slot()
        stack: list[tuple[list[os.DirEntry[bytes]], dict[bytes, _Entry], _Slot]] = []
        stack.append((_scan(top), {}, root))
        while stack:
            pending, entries, slot = stack[-1]
            if not pending:
                stack.pop()
                self.pending.append((entries, slot))
                self._drain(block=False)
                continue
            entry = pending.pop()
            try:
                mode = _kind(entry)
            except OSError as e:
                raise StoreError(f"{os.fsdecode(entry.path)}: cannot ingest: {e.strerror}") from e
            if mode == stat.S_IFDIR:
                child = _Slot()
                entries[entry.name] = child
                stack.append((_scan(entry.path), {}, child))
            elif self.pool is None or not stat.S_ISREG(mode):
                entries[entry.name] = _ingest_leaf(self.store, entry.path, mode)
            else:
                entries[entry.name] = self._file(entry.path)
        self._drain(block=True)
        assert root.node is not None
        return root.node

    def _file(self, path: bytes) -> Node | Future[Node]:
        """Store a small file now; hand a large one (and its open fd) to the pool, unless the
        prefetcher started it already."""
        assert self.pool is not None
        started = self.prefetch.claim(path, large=False) if self.prefetch else None
        if started is not None:
            return started
        fd, st = _open_file(path)
        if st.st_size < INLINE:
            try:
                return _file_node(self.store, path, fd, st)
            finally:
                os.close(fd)
        started = self.prefetch.claim(path, large=True) if self.prefetch else None
        if started is not None:  # started between the two looks
            os.close(fd)
            return started
        try:
            future = self.pool.submit(_pooled, self.store, path, fd, st)
        except BaseException:
            os.close(fd)
            raise
        future.add_done_callback(lambda f: f.cancelled() and os.close(fd))
        self.inflight.append(future)
        while len(self.inflight) > self.limit:
            self.inflight.popleft().result()  # backpressure; raises early
        return future

    def _drain(self, *, block: bool) -> None:
        """Store finished listings from the front of ``pending``."""
        while self.pending:
            entries, slot = self.pending[0]
            if not block and any(isinstance(v, Future) and not v.done()
                                 for v in entries.values()):
                return
            self.pending.popleft()
            nodes: dict[bytes, Node] = {}
            for name, value in entries.items():
                if isinstance(value, Future):
                    nodes[name] = value.result()
                elif isinstance(value, _Slot):
                    assert value.node is not None
                    nodes[name] = value.node
                else:
                    nodes[name] = value
            directory = Directory(nodes)
            slot.node = DirectoryNode(self.store.put_directory(directory), directory.size)


def _kind(entry: os.DirEntry[bytes]) -> int:
    """The entry's file type from its ``d_type`` (no syscall); other kinds need an lstat."""
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    if entry.is_symlink():
        return stat.S_IFLNK
    return entry.stat(follow_symlinks=False).st_mode


def _scan(path: bytes) -> list[os.DirEntry[bytes]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as e:
        raise StoreError(f"{os.fsdecode(path)}: cannot list directory: {e.strerror}") from e


_buffers = threading.local()


def _ingest_leaf(store: Store, path: bytes, mode: int) -> Node:
    """The node for a non-directory ``path`` of type ``mode``, storing a file's contents."""
    if stat.S_ISLNK(mode):
        try:
            return SymlinkNode(os.readlink(path))
        except ValueError as e:
            raise StoreError(f"{os.fsdecode(path)}: cannot ingest symlink: {e}") from e
    if not stat.S_ISREG(mode):
        raise _unsupported(path, mode)
    fd, st = _open_file(path)
    try:
        return _file_node(store, path, fd, st)
    finally:
        os.close(fd)


def _open_file(path: bytes) -> tuple[int, os.stat_result]:
    """Open a regular file for reading; re-check its type on the open file (it may have been
    swapped since the scan)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise StoreError(f"{os.fsdecode(path)}: cannot read: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsupported(path, st.st_mode)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):
            raise StoreError(f"{os.fsdecode(path)}: cannot ingest: {e.strerror}") from e
        raise
    return fd, st


def _ingest_path_file(store: Store, path: bytes) -> Node:
    """Open and store the regular file at ``path`` (what the prefetcher starts)."""
    fd, st = _open_file(path)
    return _pooled(store, path, fd, st)


def _pooled(store: Store, path: bytes, fd: int, st: os.stat_result) -> Node:
    """``_file_node`` in a pool thread, which owns (and closes) ``fd``."""
    try:
        return _file_node(store, path, fd, st)
    finally:
        os.close(fd)


def _file_node(store: Store, path: bytes, fd: int, st: os.stat_result) -> FileNode:
    """Store the open regular file ``fd`` (``st`` its fstat) and return its node."""
    try:
        data = _read_small(fd, st.st_size) if st.st_size <= SMALL else None
        if data is not None:
            put = getattr(store, "put_bytes", None)
            digest = put(data) if put else put_blob(store, bytes(data))
            size = len(data)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            digest, size = _stream(store, fd)
    except OSError as e:
        raise StoreError(f"{os.fsdecode(path)}: cannot ingest: {e.strerror}") from e
    return FileNode(digest, size, bool(st.st_mode & stat.S_IXUSR))


def _buffer() -> bytearray:
    """This thread's reusable read buffer (reused memory: no page faults per file)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(SMALL + 1)
    return buf


def _read_small(fd: int, size: int) -> memoryview | None:
    """The whole file (a view of this thread's buffer, valid until the next call) if it
    has at most ``SMALL`` bytes, else None: stream it. ``size`` is what fstat said."""
    buf = _buffer()
    view = memoryview(buf)
    n = os.readv(fd, [view[: size + 1]])
    if n != size:  # changed since the fstat, or a short read: read on to EOF
        while n <= SMALL and (more := os.readv(fd, [view[n:]])):
            n += more
    return view[:n] if n <= SMALL else None


def _stream(store: Store, fd: int) -> tuple[Digest, int]:
    """Copy a large file into the store in ``CHUNK`` pieces; return (digest, size)."""
    with store.blob_writer() as w:
        write_from = getattr(w, "write_from", None)
        if write_from is not None:
            size = write_from(fd)
        else:
            view, size = memoryview(_buffer())[:CHUNK], 0
            while n := os.readv(fd, [view]):
                w.write(view[:n])
                size += n
        return w.commit(), size


class UnsupportedFileType(StoreError):
    """A path to ingest is a fifo, socket or device node; ``path`` (as given, decoded) and
    ``kind`` (e.g. ``"a fifo"``) name it for a caller that words its own message."""

    reason = "unsupported-file-type"

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(
            f"{path}: is {kind}, only files, directories and symlinks can be ingested")
        self.path = path
        self.kind = kind


def file_kind(mode: int) -> str:
    """``"a fifo"``, ``"a socket"``, ... for a non-file, non-directory, non-symlink ``mode``."""
    return (
        "a fifo" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a character device" if stat.S_ISCHR(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else f"of unknown type {stat.S_IFMT(mode):o}"
    )


def _unsupported(path: bytes, mode: int) -> UnsupportedFileType:
    return UnsupportedFileType(os.fsdecode(path), file_kind(mode))
