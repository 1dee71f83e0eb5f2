"""Persistent caches (OBuilder's ``cache`` / ``delete_cache``), shared by builds over time.

A build that names cache ``n`` works on a private writable clone of ``n``'s latest snapshot.
When the build succeeds and the cache's generation has not moved since the clone was taken,
the clone becomes the new snapshot; otherwise (failure, or another build committed first) it
is discarded. Layout under ``root``::

    caches/<name>/current -> snap-<gen>   the latest snapshot; the link's target is the generation
    caches/<name>/snap-<gen>/             snapshot trees
    caches/<name>/clones/<pid>-<rand>/    clones in use (same filesystem, so commit is a rename)
    locks/cache-<name>.lock               exclusive, held briefly to clone, commit or delete
    locks/cache-<name>.inuse              shared by every user while its clone exists

Commit renames the clone to ``snap-<gen+1>`` and swaps ``current`` with one atomic rename of
a symlink, so a crash leaves either the old or the new snapshot current, plus at worst an
orphan tree that ``purge`` removes. Clones are ``cp -a --reflink=auto`` copies: copy-on-write
extents where the filesystem has them (btrfs, XFS), full copies elsewhere. Hardlink copies are
not used: a build writing into a file in place would change the snapshot under everyone.
Deleting a cache somebody uses raises CacheBusy (OBuilder's ``Busy``).

Snapshots live on the host and are handed to later builds, so a clone is checked before it
is committed (``rejected_entry``, a walk that follows no symlink): a fifo, socket or device
node, a setuid file or directory, or a setgid file fails the build with reason
``output-rejected`` and the clone is discarded. Refused rather than stripped: seccomp already
refuses these bits (build.seccomp), so one found here means the filter was bypassed, which
the build's author should see rather than find the cache silently changed. A setgid
directory is kept: directories inherit the bit from a setgid parent (a setgid store
directory on the host), and on a directory it only passes the group on. Clones copy no
extended attributes or ACLs, so none survives into a later build.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_ocibuild.build.atomic import (
    LockBusy,
    file_lock,
    pid_alive,
    remove_tree,
)
from pytest_ocibuild.build.request import CACHE_NAME
from pytest_ocibuild.castore.ingest import file_kind
from pytest_ocibuild.errors import BuildFailed, InvalidRequest, OcibuildError, StoreError

_SNAP = re.compile(r"snap-(\d+)")


class CacheBusy(OcibuildError):
    """The cache is in use by a running build and cannot be deleted."""

    reason = "busy"


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """One cache as ``ls`` reports it."""

    name: str
    generation: int
    size: int  # bytes of the current snapshot (apparent sizes)
    in_use: bool


class CacheClone:
    """A build's private writable copy of a cache snapshot; see ``CacheStore.use``."""

    def __init__(self, store: CacheStore, name: str, path: Path, generation: int) -> None:
        self.store = store
        self.name = name
        self.path = path
        self.generation = generation  # of the snapshot it was cloned from
        self.committed: bool | None = None  # None: not released yet

    def commit(self) -> bool:
        """Make this clone the cache's snapshot if nobody committed since; True if it did."""
        if self.committed is not None:
            raise ValueError(f"cache clone {self.path} was already released")
        self.committed = self.store._commit(self)
        return self.committed


class CacheStore:
    """The persistent caches under ``root`` (see module docstring)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.caches_dir = self.root / "caches"
        self.locks_dir = self.root / "locks"
        self.caches_dir.mkdir(parents=True, exist_ok=True)
        self.locks_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"CacheStore({str(self.root)!r})"

    def _dir(self, name: str) -> Path:
        if not CACHE_NAME.fullmatch(name):
            raise InvalidRequest(f"invalid cache name {name!r}")
        return self.caches_dir / name

    def _lock(self, name: str, suffix: str = "lock") -> Path:
        return self.locks_dir / f"cache-{name}.{suffix}"

    def generation(self, name: str) -> int | None:
        """The current generation of ``name``, or None if the cache does not exist."""
        try:
            target = os.readlink(self._dir(name) / "current")
        except (FileNotFoundError, NotADirectoryError):
            return None
        m = _SNAP.fullmatch(target)
        if m is None:
            raise StoreError(f"cache {name}: 'current' points to {target!r}", reason="corrupt")
        return int(m.group(1))

    def snapshot(self, name: str) -> Path | None:
        """The directory of ``name``'s current snapshot (read it, never write), or None."""
        gen = self.generation(name)
        return None if gen is None else self._dir(name) / f"snap-{gen}"

    @contextlib.contextmanager
    def use(self, name: str, *, owner: tuple[int, int] | None = None) -> Iterator[CacheClone]:
        """A fresh clone of ``name``'s latest snapshot (an empty cache is created first).

        ``owner``: chown the clone's top directory (the build user's host ids). Leaving the
        block without ``clone.commit()`` discards the clone. The cache counts as in use (and
        cannot be deleted) for the whole block.
        """
        base = self._dir(name)
        with contextlib.ExitStack() as stack:
            with file_lock(self._lock(name)):
                stack.enter_context(file_lock(self._lock(name, "inuse"), shared=True))
                gen = self.generation(name)
                if gen is None:
                    gen = 0
                    (base / "snap-0").mkdir(parents=True, exist_ok=True)
                    _swap_current(base, "snap-0")
                clones = base / "clones"
                clones.mkdir(exist_ok=True)
                path = clones / f"{os.getpid()}-{os.urandom(6).hex()}"
                stack.callback(remove_tree, path)
                _clone_tree(base / f"snap-{gen}", path)
                if owner is not None:
                    _hand_over(path, owner)
            yield CacheClone(self, name, path, gen)

    def _commit(self, clone: CacheClone) -> bool:
        try:
            _take_back(clone.path)
            found = rejected_entry(clone.path)
        except OSError as e:
            raise BuildFailed(f"cache {clone.name!r}: cannot check the clone before committing "
                              f"it: {e.strerror} (the cache was not updated)",
                              reason="output-rejected") from e
        if found is not None:
            rel, what = found
            raise BuildFailed(
                f"cache {clone.name!r}: {rel} is {what}, which a cache may not keep (the "
                "cache was not updated)", reason="output-rejected")
        base = self._dir(clone.name)
        with file_lock(self._lock(clone.name)):
            gen = self.generation(clone.name)
            if gen != clone.generation:
                return False  # moved on since the clone (or deleted): discard
            new = f"snap-{gen + 1}"
            os.rename(clone.path, base / new)
            _swap_current(base, new)
        remove_tree(base / f"snap-{gen}")  # readers never hold snapshots: only clones do
        return True

    def delete(self, name: str) -> bool:
        """Remove cache ``name``; False if it did not exist; CacheBusy if it is in use."""
        base = self._dir(name)
        with file_lock(self._lock(name)):
            try:
                with file_lock(self._lock(name, "inuse"), blocking=False):
                    if not base.exists():
                        return False
                    trash = self.caches_dir / f".deleted-{name}-{os.getpid()}-{os.urandom(4).hex()}"
                    os.rename(base, trash)
            except LockBusy:
                raise CacheBusy(f"cache {name!r} is in use by a running build") from None
        remove_tree(trash)
        return True

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.caches_dir) if CACHE_NAME.fullmatch(n))

    def in_use(self, name: str) -> bool:
        try:
            with file_lock(self._lock(name, "inuse"), blocking=False):
                return False
        except LockBusy:
            return True

    def ls(self) -> list[CacheInfo]:
        out = []
        for name in self.names():
            gen = self.generation(name)
            if gen is None:
                continue
            snap = self._dir(name) / f"snap-{gen}"
            out.append(CacheInfo(name, gen, tree_size(snap), self.in_use(name)))
        return out

    def purge(self) -> list[Path]:
        """Remove what crashed users left: their clones, orphan snapshots, half-done deletes."""
        removed: list[Path] = []
        for entry in sorted(self.caches_dir.iterdir()):
            if entry.name.startswith(".deleted-") or entry.name.startswith(".current"):
                remove_tree(entry)
                removed.append(entry)
            elif CACHE_NAME.fullmatch(entry.name):
                removed += self._purge_one(entry.name)
        return removed

    def _purge_one(self, name: str) -> list[Path]:
        base = self._dir(name)
        removed = []
        with file_lock(self._lock(name)):
            gen = self.generation(name)
            for entry in sorted(base.iterdir()):
                m = _SNAP.fullmatch(entry.name)
                stale = (m is not None and int(m.group(1)) != gen) or entry.name.startswith(
                    ".current")
                if stale:
                    remove_tree(entry)
                    removed.append(entry)
            clones = base / "clones"
            for clone in sorted(clones.iterdir()) if clones.is_dir() else []:
                pid = clone.name.split("-", 1)[0]
                if not pid.isdigit() or not pid_alive(int(pid)):
                    remove_tree(clone)
                    removed.append(clone)
        return removed


def _swap_current(base: Path, target: str) -> None:
    """Point ``base/current`` at ``target`` with one atomic rename."""
    tmp = base / f".current-{os.getpid()}-{os.urandom(4).hex()}"
    os.symlink(target, tmp)
    os.replace(tmp, base / "current")


def _hand_over(path: Path, owner: tuple[int, int]) -> None:
    """Give a fresh clone to the build user: its top directory as root; the whole tree (the
    caller's, see ``_take_back``) through the user namespace as a normal user."""
    from pytest_ocibuild.build import userns

    if os.geteuid() != 0 and userns.usable():
        userns.chown_tree(path, *owner)
        return
    with contextlib.suppress(PermissionError):
        os.chown(path, *owner)


def _take_back(path: Path) -> None:
    """As a normal user, give what a build left in a clone (its subordinate ids') back to
    the caller before it is checked and committed (nothing to do as root)."""
    from pytest_ocibuild.build import userns

    if os.geteuid() != 0 and userns.usable():
        userns.give_back(path)


def _clone_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to the new path ``dst`` keeping modes, owners and links (CoW if possible)."""
    # cp -a without its xattr and context preservation
    done = subprocess.run(["cp", "-dR", "--preserve=mode,ownership,timestamps,links",
                           "--reflink=auto", "--", str(src), str(dst)],
                          capture_output=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        msg = done.stderr.decode(errors="replace").strip().splitlines()
        raise StoreError(f"cannot clone cache {src}: {msg[-1] if msg else 'cp failed'}")


def rejected_entry(root: Path) -> tuple[str, str] | None:
    """The first entry at or below ``root`` a cache must not keep, as (path relative to
    ``root``, what it is), or None. Symlinks are looked at, never followed; OSError if a
    directory cannot be read (then it cannot be vouched for)."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        found = _rejected(os.fstat(top).st_mode)
        if found is not None:
            return ".", found
        for dirpath, dirs, files, dir_fd in os.fwalk(".", dir_fd=top, onerror=_raise):
            for name in (*dirs, *files):
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                found = _rejected(mode)
                if found is not None:
                    return os.path.normpath(os.path.join(dirpath, name)), found
    finally:
        os.close(top)
    return None


def _raise(error: OSError) -> None:
    raise error


def _rejected(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return file_kind(mode)
    if mode & stat.S_ISUID or (mode & stat.S_ISGID and not stat.S_ISDIR(mode)):
        what = "setuid" if mode & stat.S_ISUID else "setgid"
        kind = "a directory" if stat.S_ISDIR(mode) else "a file"
        return f"{kind} with the {what} bit (mode {stat.S_IMODE(mode):o})"
    return None


def tree_size(path: Path) -> int:
    """Sum of apparent sizes of the files below ``path`` (0 if missing)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total
