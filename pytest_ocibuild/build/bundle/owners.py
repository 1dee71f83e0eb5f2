"""Who owns what in a bundle: host ids from the spec's id maps, chown/ACL helpers.

Scratch directories and additional files belong to the host ids the build user (uid 1000,
gid 100 in the container) maps to. The bundle directory is 0700, or 0710 with container
root's host group when container root is not the caller (runc's init, running as container
root, must reach ``root/``). Clones of persistent caches that other build slots' users wrote
are given to this build's user.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.ids import BUILD_GID, BUILD_UID, is_build_id
from pytest_ocibuild.errors import BundleError


@dataclass(frozen=True, slots=True)
class Owners:
    """The host ids a bundle is made for, read once from a spec's id maps."""

    build: tuple[int, int]  # host (uid, gid) of the build user (container 1000:100)
    root_uid: int  # host uid of container root
    root_gid: int  # host gid of container root

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Owners:
        return cls(build=(host_id(spec, "uidMappings", BUILD_UID),
                          host_id(spec, "gidMappings", BUILD_GID)),
                   root_uid=host_id(spec, "uidMappings", 0),
                   root_gid=host_id(spec, "gidMappings", 0))

    @property
    def root_owner(self) -> tuple[int, int]:
        """Owner of ``root/`` and of an inputs-dir scratch path: see ``caller_or``."""
        return caller_or(self.root_uid), self.build[1]

    @property
    def reader(self) -> int | None:
        """Container root's host uid when it does not own ``root/`` (needs an ACL entry)."""
        return None if self.root_uid == caller_or(self.root_uid) else self.root_uid


def build_owner(spec: dict[str, Any]) -> tuple[int, int]:
    """Host ``(uid, gid)`` of the build user (container 1000:100) under ``spec``'s id maps."""
    return host_id(spec, "uidMappings", BUILD_UID), host_id(spec, "gidMappings", BUILD_GID)


def host_id(spec: dict[str, Any], key: str, container_id: int) -> int:
    maps = spec.get("linux", {}).get(key)
    if not maps:  # no user namespace: ids are the host's
        return container_id
    for m in maps:
        if m["containerID"] <= container_id < m["containerID"] + m["size"]:
            return int(m["hostID"]) + container_id - int(m["containerID"])
    raise BundleError(f"linux.{key} does not map container id {container_id}")


def caller_or(container_root: int) -> int:
    """Owner of what container root would own: the caller when it runs as root and
    container root is another id (so that id is no owner of anything), else container root."""
    return os.geteuid() if os.geteuid() == 0 else container_root


def restrict(bundle_dir: Path, root_gid: int) -> None:
    """Nobody but the caller may enter ``bundle_dir``; container root's group (when it is
    not the caller's) may search it, so that runc's init can reach ``root/``."""
    if root_gid != os.getegid():
        try:
            os.chown(bundle_dir, os.geteuid(), root_gid)
            os.chmod(bundle_dir, 0o710)
            return
        except PermissionError:
            pass
    os.chmod(bundle_dir, 0o700)


_ACL_HEADER = struct.pack("<I", 2)  # POSIX ACL xattr version 2; entries (tag, perm, id)
_ACL_ANY = 0xFFFFFFFF


def let_read(root: Path, uid: int, owner: tuple[int, int]) -> None:
    """Give ``uid`` read and search on ``root`` (mode 0750) by an ACL entry, keeping the mode
    as the build sees it; where the file system has no ACLs, ``uid`` owns ``root``."""
    entries = ((0x01, 7, _ACL_ANY), (0x02, 5, uid), (0x04, 5, _ACL_ANY), (0x10, 5, _ACL_ANY),
               (0x20, 0, _ACL_ANY))  # user::rwx user:uid:r-x group::r-x mask::r-x other::---
    try:
        os.setxattr(root, "system.posix_acl_access",
                    _ACL_HEADER + b"".join(struct.pack("<HHI", *e) for e in entries))
    except OSError:
        chown_or_keep(root, (uid, owner[1]), 0o750)


def reown(top: Path, owner: tuple[int, int]) -> None:
    """Give the entries of a cache clone that other build slots' users own to ``owner``
    (root only; nothing is followed)."""
    if os.geteuid() != 0 or not is_build_id(owner[0]):
        return
    for dirpath, dirs, files in os.walk(top):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in (*dirs, *files))):
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != owner and (is_build_id(st.st_uid)
                                                    or is_build_id(st.st_gid)):
                os.lchown(name, *owner)


_deferred = threading.local()


@contextlib.contextmanager
def deferred_chowns() -> Iterator[None]:
    """As a normal user, make the block's ``chown``s (through the user namespace) at its end,
    in one request per owner: the caller cannot create anything in a directory it gave
    away, so the bundle is made first."""
    from pytest_ocibuild.build import userns

    _deferred.paths = pending = []
    try:
        yield
    finally:
        _deferred.paths = None
    for owner in dict.fromkeys(o for _, o in pending):
        userns.chown_entries([p for p, o in pending if o == owner], *owner)


def chown(path: Path, owner: tuple[int, int], mode: int) -> None:
    """Give ``path`` to the build user; an unprivileged caller does it through its user
    namespace (``userns``), or without one falls back to world-writable."""
    try:
        os.lchown(path, *owner)
    except PermissionError:
        from pytest_ocibuild.build import userns

        if not path.is_symlink():
            rootless = userns.usable() and userns.mapped(*owner)
            os.chmod(path, mode if rootless else mode | 0o777 if path.is_dir() else mode | 0o666)
            if rootless:
                pending = getattr(_deferred, "paths", None)
                if pending is None:
                    userns.chown_entries([path], *owner)
                else:
                    pending.append((path, owner))
        return
    if not path.is_symlink():
        os.chmod(path, mode)


def chown_or_keep(path: Path, owner: tuple[int, int], mode: int) -> None:
    """``chown``, but an unprivileged caller keeps the directory its own (not world-writable):
    container root is the caller then; its group (the build's) is set through the user
    namespace where one can be entered."""
    try:
        os.chown(path, *owner)
    except PermissionError:
        from pytest_ocibuild.build import userns

        if userns.usable() and userns.mapped(*owner):
            userns.chown_entries([path], *owner)
    os.chmod(path, mode)
