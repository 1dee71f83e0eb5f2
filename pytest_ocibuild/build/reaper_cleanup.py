"""What the reaper removes when its client dies: mounts and directories named for its pid.

Stdlib only: loaded by ``reaper`` (run as ``python -I -S``) from beside it. See reaper.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil

_MNT_DETACH = 2
_OWNED = r"(?:ocibuild-{pid}-.+|(?:roots|bundles)-{pid}-[0-9a-f]+)"


def owned_root(bundle: str, pid: int) -> tuple[str, str] | None:
    """``(root, dir)``: the topmost ancestor of ``bundle`` (itself included) named for ``pid``
    and the bundle root it is in (above a ``shared/`` pool directory); None if none is."""
    owned = re.compile(_OWNED.format(pid=pid))
    parts = os.path.abspath(bundle).split("/")
    for i in range(1, len(parts)):
        if owned.fullmatch(parts[i]):
            top = i - 1 if i > 1 and parts[i - 1] == "shared" else i
            return "/".join(parts[:top]) or "/", "/".join(parts[: i + 1])
    return None


def owned_dirs(roots: set[str], pid: int) -> set[str]:
    """The directories named for ``pid`` in each of ``roots`` and in its ``shared/``."""
    owned = re.compile(_OWNED.format(pid=pid))
    found = set()
    for root in roots:
        for base in (root, os.path.join(root, "shared")):
            try:
                with os.scandir(base) as it:
                    found.update(os.path.realpath(e.path) for e in it
                                 if owned.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
            except OSError:
                continue
    return found


def _unescape(field: bytes) -> str:
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def mounts_below(dirs: set[str]) -> list[tuple[str, str, str]]:
    """``(point, fstype, major:minor)`` of each mount at or below one of ``dirs``."""
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields, _, rest = line.partition(b" - ")
            parts = fields.split(b" ")
            point = _unescape(parts[4])
            if any(point == d or point.startswith(d + "/") for d in dirs):
                found.append((point, rest.split(b" ", 1)[0].decode(), parts[2].decode()))
    return found


def detach(point: str, fstype: str, dev: str, env: dict[str, str]) -> None:
    """Detach one mount lazily; a FUSE connection is aborted first (its server may be gone)."""
    if fstype.startswith("fuse"):
        with contextlib.suppress(OSError, IndexError), \
                open(f"/sys/fs/fuse/connections/{dev.split(':')[1]}/abort", "w") as f:
            f.write("1")
    if ctypes.CDLL(None, use_errno=True).umount2(os.fsencode(point), _MNT_DETACH) == 0:
        return
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if fstype.startswith("fuse") and tool:
        with contextlib.suppress(OSError, ChildProcessError):
            null = os.open(os.devnull, os.O_RDWR)
            try:
                pid = os.posix_spawn(tool, [tool, "-u", "-z", point], env, file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                    (os.POSIX_SPAWN_DUP2, null, 2)])
            finally:
                os.close(null)
            os.waitpid(pid, 0)


def _remove_tree(path: str) -> None:
    """rmtree (never following symlinks), making read-only directories writable on the way."""
    def onerror(_func: object, p: str, _exc: object) -> None:
        for target in (os.path.dirname(p), p):
            with contextlib.suppress(OSError):
                os.chmod(target, 0o700, follow_symlinks=False)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)

    shutil.rmtree(path, onerror=onerror)
    if os.path.lexists(path) and os.geteuid() != 0:  # a rootless build's: subordinate ids
        _userns().remove_tree(path)


@functools.cache
def _userns():  # type: ignore[no-untyped-def]
    """build/userns.py, loaded once from beside this file (stdlib only, as this module)."""
    import importlib.util

    where = os.path.join(os.path.dirname(os.path.abspath(__file__)), "userns.py")
    spec = importlib.util.spec_from_file_location("ocibuild_userns", where)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_up(dirs: set[str], env: dict[str, str]) -> None:
    """Detach every mount below ``dirs`` (deepest first), then remove those free of mounts."""
    for point, fstype, dev in sorted(mounts_below(dirs), key=lambda m: len(m[0]), reverse=True):
        detach(point, fstype, dev, env)
    held = [m[0] for m in mounts_below(dirs)]
    for d in sorted(dirs):
        if not any(p == d or p.startswith(d + "/") for p in held) and os.path.isdir(d):
            with contextlib.suppress(OSError):
                _remove_tree(d)
