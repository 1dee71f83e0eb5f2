"""RootPool: root filesystems (bundle ``root/`` skeletons) reused by later builds of a process.

A build's ``/`` is a directory tree (see bundle.RootSkeleton) that the build can change only in
``/tmp``: everything else belongs to container root and is not writable by the build user.
Making it and removing it again costs each build about twenty directory entries, i.e. journal
updates that stall whenever the file system is busy. So a finished build's root goes back to
the pool with ``tmp/`` emptied, and the next build with the same skeleton (``key``) takes it.

Each root is used by one build at a time, and only by this process: the pool lives in
``<directory>/roots-<pid>-<random>/`` (one per pool object) and is removed when the pool is
garbage collected or the process exits. A process that dies leaves its pool behind;
``purge_dead`` removes those of dead processes (after their containers are gone: see
Executor.purge).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import stat
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from pytest_ocibuild.build.atomic import pid_alive, remove_tree
from pytest_ocibuild.build.bundle import RootSkeleton

_POOL = re.compile(r"roots-(\d+)-[0-9a-f]+")
TMP_MODE = 0o1777


class RootPool:
    """Free roots by skeleton key; ``use`` lends one (made if none is free)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._free: dict[str, list[tuple[Path, os.stat_result]]] = {}
        self._n = itertools.count()
        self._pid = -1
        self._pool = self.directory  # set per process by _own

    def _own(self) -> Path:
        """This process's pool directory (a forked child starts a pool of its own)."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._free = pid, {}
            self._pool = self.directory.absolute() / f"roots-{pid}-{secrets.token_hex(4)}"
            weakref.finalize(self, _remove_pool, self._pool, pid)
        return self._pool

    @contextlib.contextmanager
    def use(self, skeleton: RootSkeleton) -> Iterator[Path]:
        """A root made by ``skeleton.make``, for one build; back to the pool afterwards.

        If the block raises, the root is removed instead (its container may not be gone).
        """
        key = skeleton.key
        with self._lock:
            pool = self._own()
            free = self._free.get(key)
            taken = free.pop() if free else None
        if taken is None:
            pool.mkdir(parents=True, exist_ok=True)
            root = pool / f"{key}-{next(self._n)}"
            try:
                skeleton.make(root)
            except BaseException:
                remove_tree(root)
                raise
            taken = (root, os.lstat(root / "tmp"))
        root, tmp_stat = taken
        try:
            yield root
        except BaseException:
            remove_tree(root)
            raise
        if _reset(root, tmp_stat):
            with self._lock:
                if os.getpid() == self._pid:
                    self._free.setdefault(key, []).append(taken)
                    return
        remove_tree(root)


def _reset(root: Path, made: os.stat_result) -> bool:
    """Empty ``root/tmp`` (the one thing a build can change); False if that did not work."""
    tmp = root / "tmp"
    try:
        with os.scandir(tmp) as it:
            names = [e.name for e in it]
        for name in names:
            remove_tree(tmp / name)
        st = os.lstat(tmp)
        if (st.st_ino, st.st_uid, st.st_gid) != (made.st_ino, made.st_uid, made.st_gid) \
                or not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != TMP_MODE:
            return False
        with os.scandir(tmp) as it:
            return next(it, None) is None
    except OSError:
        return False


def _remove_pool(pool: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child: the pool is its parent's
        remove_tree(pool)


def purge_dead(directory: Path) -> list[str]:
    """Remove the pools of processes that no longer exist; the paths removed."""
    gone: list[str] = []
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except FileNotFoundError:
        return gone
    for entry in entries:
        m = _POOL.fullmatch(entry.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            remove_tree(Path(entry.path))
            gone.append(entry.path)
    return gone
