"""Keyed file locks and staging-then-rename writes, shared by results, caches and lifecycle.

Locks are ``flock(2)`` on a lock file: held per open file description, so two threads of one
process exclude each other exactly as two processes do, and the kernel drops the lock of a
process that dies (SIGKILL included). Lock *files* may outlive their holders; ``remove_stale_lock``
deletes one only while holding it exclusively, and ``file_lock`` re-checks after acquiring that
the file it locked is still the one at the path (else it retries), so removal never lets two
holders in.

Staging files are named ``<kind>.<pid>-<random>.<n>`` in a ``tmp/`` directory on the same
filesystem as their target, created with O_EXCL and renamed into place with ``os.replace``:
no two writers ever share a staging name (Nixery's race), and ``staging_pid`` lets a purge tell
a dead writer's leftovers from a live one's write in flight.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

_counter = itertools.count()
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class LockBusy(Exception):
    """A non-blocking ``file_lock`` found the lock held."""


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (a pid reused by another process also counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[int]:
    """Hold an flock on ``path`` (created if missing) for the block; yields the descriptor.

    ``blocking=False`` raises LockBusy instead of waiting.
    """
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            raise LockBusy(str(path)) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # removed (and maybe re-created) while we waited: lock the new one
    try:
        yield fd
    finally:
        os.close(fd)


def remove_stale_lock(path: Path) -> bool:
    """Delete lock file ``path`` if nobody holds it; True if removed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        if not _same_file(fd, path):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        cur = os.stat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)


def staging_path(tmp_dir: Path, kind: str) -> Path:
    """A fresh staging name in ``tmp_dir`` carrying this process's pid."""
    return tmp_dir / f"{kind}.{os.getpid()}-{os.urandom(4).hex()}.{next(_counter)}"


def staging_pid(name: str) -> int | None:
    """The writer pid encoded in a staging name (``kind.<pid>-<random>.<n>``), or None."""
    try:
        return int(name.split(".", 2)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def atomic_write(target: Path, data: bytes, tmp_dir: Path, *, fsync: bool = True,
                 mode: int = 0o644) -> None:
    """Write ``data`` to ``target`` through a private staging file and ``os.replace``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_path(tmp_dir, target.suffix.lstrip(".") or "file")
    fd = os.open(staging, _FLAGS, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _replace(staging, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


def atomic_copy(src: Path, target: Path, tmp_dir: Path, *, fsync: bool = True) -> None:
    """Copy file ``src`` to ``target`` through a staging file and ``os.replace``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_path(tmp_dir, target.suffix.lstrip(".") or "file")
    try:
        with open(src, "rb") as f, open(staging, "xb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        _replace(staging, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


def _replace(staging: Path, target: Path) -> None:
    try:
        os.replace(staging, target)
    except FileNotFoundError:
        if not os.path.exists(staging):
            raise
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)


def older_than(path: Path, seconds: float) -> bool:
    """True if ``path``'s mtime is more than ``seconds`` ago (False if it vanished)."""
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise


def remove_tree(path: Path) -> None:
    """Delete a tree even where a build left read-only directories (missing is fine).

    As a normal user, what a build wrote belongs to the caller's subordinate ids: when plain
    removal is refused (EACCES/EPERM), the tree is removed through a user namespace mapping
    them (``userns``).
    """
    if os.geteuid() != 0:
        from pytest_ocibuild.build import userns

        if userns.usable():
            try:  # no chmod retries: the namespace's root ignores modes
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
            except (PermissionError, FileNotFoundError):
                if os.path.lexists(path):
                    userns.remove_tree(path)
            return
    _remove_tree(path)


def _remove_tree(path: Path) -> None:

    def onerror(func: object, p: str, _exc: object) -> None:
        parent = os.path.dirname(p)
        for target in (parent, p):
            try:
                st = os.lstat(target)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(target, st.st_mode | stat.S_IRWXU)
            except OSError:
                pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=onerror)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass

    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=onerror)
        else:
            os.unlink(path)
