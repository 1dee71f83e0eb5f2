"""RootPool: directory skeletons (bundle ``root/`` filesystems and bundle shells) reused by
later builds of a process.

A build's ``/`` is a directory tree (see bundle.RootSkeleton) that the build can change only in
``/tmp``: everything else belongs to container root and is not writable by the build user.
Making it and removing it again costs each build about twenty directory entries, i.e. journal
updates that stall whenever the file system is busy. So a finished build's root goes back to
the pool with ``tmp/`` emptied, and the next build with the same skeleton (``key``) takes it.
Bundle shells (bundle.BundleShell: the bundle, ``inputs/`` and scratch directories) are pooled
the same way, their scratch directories emptied.

A skeleton offers ``key``, ``make(path)``, ``mark(path)`` (what to remember of what was made)
and ``reset(path, mark) -> bool`` (clean up after a build; False: remove it instead). Each
lent directory is used by one build at a time, and only by this process: the pool lives in
``<directory>/<kind>-<pid>-<random>/`` (one per pool object) and is removed when the pool is
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
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from pytest_ocibuild.build.atomic import pid_alive, remove_tree

_POOL = re.compile(r"(?:roots|bundles)-(\d+)-[0-9a-f]+")
SHARED_DIR = "shared"  # under a bundle root: what bundles share, these pools included


class Skeleton(Protocol):
    @property
    def key(self) -> str: ...

    def make(self, path: Path) -> None: ...

    def mark(self, path: Path) -> Any: ...

    def reset(self, path: Path, made: Any) -> bool: ...


class RootPool:
    """Free directories by skeleton key; ``use`` lends one (made if none is free).

    ``kind`` names the pool's directory (``roots`` or ``bundles``).
    """

    def __init__(self, directory: Path, kind: str = "roots") -> None:
        self.directory = Path(directory)
        self.kind = kind
        self._lock = threading.Lock()
        self._free: dict[str, list[tuple[Path, Any]]] = {}
        self._n = itertools.count()
        self._pid = -1
        self._pool = self.directory  # set per process by _own

    def _own(self) -> Path:
        """This process's pool directory (a forked child starts a pool of its own)."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._free = pid, {}
            self._pool = self.directory.absolute() / f"{self.kind}-{pid}-{secrets.token_hex(4)}"
            weakref.finalize(self, _remove_pool, self._pool, pid)
        return self._pool

    @contextlib.contextmanager
    def use(self, skeleton: Skeleton) -> Iterator[Path]:
        """A directory made by ``skeleton.make``, for one build; back to the pool afterwards.

        If the block raises, the directory is removed instead (its container may not be gone).
        """
        key = skeleton.key
        with self._lock:
            pool = self._own()
            free = self._free.get(key)
            taken = free.pop() if free else None
        if taken is None:
            pool.mkdir(parents=True, exist_ok=True)
            path = pool / f"{key}-{next(self._n)}"
            try:
                skeleton.make(path)
                taken = (path, skeleton.mark(path))
            except BaseException:
                remove_tree(path)
                raise
        path, made = taken
        try:
            yield path
        except BaseException:
            remove_tree(path)
            raise
        if skeleton.reset(path, made):
            with self._lock:
                if os.getpid() == self._pid:
                    self._free.setdefault(key, []).append(taken)
                    return
        remove_tree(path)


def _remove_pool(pool: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child: the pool is its parent's
        remove_tree(pool)


def pool_pid(name: str) -> int | None:
    """The pid in a pool directory's name (``roots-<pid>-<hex>``), or None for other names."""
    m = _POOL.fullmatch(name)
    return int(m.group(1)) if m else None


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
