"""User-namespace id maps for build containers (container root, build user 1000, group 100).

Inside the sandbox the build runs as uid 1000 / gid 100 (like Nix). On the host:

- **As root**, builds use ids of a range no account has (Nix's ``auto-allocate-uids`` does the
  same: ``start-id`` 872415232, 65536 ids per build, ``id-count`` 128 builds). Ours starts at
  ``ID_START`` = 905969664 (0x36000000, just above Nix's default range, so both can run on one
  host) and spans ``BLOCKS`` blocks of ``BLOCK`` ids; if any id of it is in ``/etc/passwd``,
  ``/etc/group`` or a ``/etc/subuid`` / ``/etc/subgid`` range, the next range up is taken.
  Block 0's first id is container root (uid and gid); build slot ``i`` (one per concurrently
  running build, see ``Slots``) runs as the first id of block ``1 + i % (BLOCKS - 1)``, as uid
  and gid, so concurrent builds do not share a host uid. Container root maps to that unused id
  only when runc can reach the root filesystem as it: runc's init bind-mounts and opens the
  rootfs as container root, so every directory down to the bundle root must be searchable by
  that id (``reach``); otherwise container root stays host root (``0 0 1``).
- **As a normal user**, container 0 maps to the caller and 1000 / 100 to an id of the
  caller's ``/etc/subuid`` / ``/etc/subgid`` range (first line naming the user or its uid):
  build slot ``i`` gets the range's ``i``-th id (modulo its size), so concurrent builds do not
  share a host uid either; without such a line ``detect`` raises RuntimeUnavailable saying
  which line to add. What such builds leave is removed through a user namespace mapping the
  whole range (``userns``).
  (Unprivileged runc also needs ``newuidmap``/``newgidmap`` from the ``uidmap`` package.)
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.errors import RuntimeUnavailable

BUILD_UID = 1000
BUILD_GID = 100

ID_START = 0x36000000  # 905969664
BLOCK = 1 << 16  # ids per build, as Nix's auto-allocate-uids
BLOCKS = 128  # container root's block + 127 build slots: 8,388,608 ids, Nix's id-count
_TRIES = 8  # ranges tried above ID_START before giving up

SUBUID_PATH = Path("/etc/subuid")
SUBGID_PATH = Path("/etc/subgid")
PASSWD_PATH = Path("/etc/passwd")
GROUP_PATH = Path("/etc/group")

IdMapping = tuple[int, int, int]  # (container_id, host_id, size)


@dataclass(frozen=True, slots=True)
class IdMaps:
    """uid and gid mappings, each ``(container_id, host_id, size)``."""

    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]

    @classmethod
    def detect(
        cls,
        *,
        uid: int | None = None,
        gid: int | None = None,
        user: str | None = None,
        subuid_path: Path = SUBUID_PATH,
        subgid_path: Path = SUBGID_PATH,
        passwd_path: Path = PASSWD_PATH,
        group_path: Path = GROUP_PATH,
        slot: int = 0,
        reach: Path | None = None,
    ) -> IdMaps:
        """Maps for the calling process (parameters override euid, egid, user name, files).

        ``slot``: the build slot (each slot has its own build uid and gid). ``reach``: the
        bundle root; as root, container root maps to an unused id only if that id can search
        every directory down to it (None: container root is host root).
        """
        uid = os.geteuid() if uid is None else uid
        gid = os.getegid() if gid is None else gid
        if uid == 0:
            base = id_base(subuid_path, subgid_path, passwd_path, group_path)
            build = base + BLOCK * (1 + slot % (BLOCKS - 1))
            root = base if reach is not None and searchable(reach, base, base) else 0
            return cls(uid_mappings=_pair(root, BUILD_UID, build),
                       gid_mappings=_pair(root if root else gid, BUILD_GID, build))
        if user is None:
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = None
        names = {str(uid)} | ({user} if user else set())
        sub_uid = subordinate_range(subuid_path, names)
        sub_gid = subordinate_range(subgid_path, names)
        if sub_uid is None or sub_gid is None:
            missing = subuid_path if sub_uid is None else subgid_path
            who = user or str(uid)
            raise RuntimeUnavailable(
                f"no range for {who!r} in {missing}: add a line like "
                f"'{who}:100000:65536' to /etc/subuid and /etc/subgid (or run as root)"
            )
        return cls(
            uid_mappings=_pair(uid, BUILD_UID, sub_uid[0] + slot % sub_uid[1]),
            gid_mappings=_pair(gid, BUILD_GID, sub_gid[0] + slot % sub_gid[1]),
        )

    @classmethod
    def canonical(cls) -> IdMaps:
        """A fixed mapping (tvix's defaults) for golden files; no real host ids."""
        return cls(
            uid_mappings=((0, 1000, 1), (BUILD_UID, 100000, 1)),
            gid_mappings=((0, 100, 1), (BUILD_GID, 100000, 1)),
        )

    def host_uid(self, container_uid: int) -> int:
        """Host uid that ``container_uid`` maps to (KeyError if unmapped)."""
        return _lookup(self.uid_mappings, container_uid)

    def host_gid(self, container_gid: int) -> int:
        """Host gid that ``container_gid`` maps to (KeyError if unmapped)."""
        return _lookup(self.gid_mappings, container_gid)

    def to_spec(self) -> dict[str, list[dict[str, Any]]]:
        """``uidMappings`` / ``gidMappings`` entries for an OCI ``linux`` section."""

        def conv(maps: tuple[IdMapping, ...]) -> list[dict[str, Any]]:
            return [{"containerID": c, "hostID": h, "size": s} for c, h, s in maps]

        return {"uidMappings": conv(self.uid_mappings), "gidMappings": conv(self.gid_mappings)}


def id_base(
    subuid_path: Path = SUBUID_PATH, subgid_path: Path = SUBGID_PATH,
    passwd_path: Path = PASSWD_PATH, group_path: Path = GROUP_PATH,
) -> int:
    """First id of the range root's builds use (see the module docstring)."""
    return _id_base(*(_text(p) for p in (subuid_path, subgid_path, passwd_path, group_path)))


def is_build_id(host_id: int, base: int | None = None) -> bool:
    """True if ``host_id`` is one of root's build ids (a slot's uid or gid, any slot)."""
    base = id_base() if base is None else base
    off = host_id - base
    return BLOCK <= off < BLOCK * BLOCKS and off % BLOCK == 0


def searchable(path: Path, uid: int, gid: int) -> bool:
    """True if ``uid``/``gid`` (no supplementary groups) may search every existing directory
    from ``/`` down to ``path`` (ACLs are not read; missing ones would be made 0755)."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(1, len(parts) + 1):
        try:
            st = os.stat(Path(*parts[:i]))
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


@functools.lru_cache(maxsize=8)
def _id_base(subuid: str, subgid: str, passwd: str, group: str) -> int:
    taken: list[tuple[int, int]] = []  # (start, count)
    for text in (subuid, subgid):
        taken += [r for line in text.splitlines() if (r := _range_of(line)) is not None]
    for text in (passwd, group):
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                taken.append((int(fields[2]), 1))
    size = BLOCK * BLOCKS
    for k in range(_TRIES):
        base = ID_START + k * size
        if not any(s < base + size and base < s + n for s, n in taken):
            return base
    raise RuntimeUnavailable(
        f"no free id range for builds: ids {ID_START}..{ID_START + _TRIES * size - 1} are all "
        "used by accounts or subordinate ranges (/etc/passwd, /etc/group, /etc/subuid)")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise RuntimeUnavailable(f"cannot read {path}: {e.strerror}") from None


def _pair(host_root: int, container_build: int, host_build: int) -> tuple[IdMapping, ...]:
    if host_root == host_build:
        raise RuntimeUnavailable(
            f"id {host_root} would be both container root and the build user; "
            "give the caller a subordinate id range that does not contain its own id"
        )
    return ((0, host_root, 1), (container_build, host_build, 1))


def _lookup(maps: tuple[IdMapping, ...], cid: int) -> int:
    for c, h, s in maps:
        if c <= cid < c + s:
            return h + (cid - c)
    raise KeyError(cid)


def _range_of(line: str) -> tuple[int, int] | None:
    fields = line.strip().split(":")
    if len(fields) != 3:
        return None
    try:
        start, count = int(fields[1]), int(fields[2])
    except ValueError:
        return None
    return (start, count) if start >= 0 and count >= 1 else None


def subordinate_range(path: Path, names: set[str]) -> tuple[int, int] | None:
    """``(start, count)`` of the first ``name:start:count`` line of ``path`` whose name is in
    ``names`` (None if there is none)."""
    for line in _text(path).splitlines():
        if line.strip().split(":")[0] in names and (r := _range_of(line)) is not None:
            return r
    return None

def caller_id_maps() -> IdMaps:
    """The id maps a normal user's bwrap builds need (``Executor(id_maps=...)``): container
    root and the build user both the caller (bwrap maps the caller to the build user; the
    maps only say who owns the bundle's files, they are never written to the kernel)."""
    uid, gid = os.geteuid(), os.getegid()
    return IdMaps(uid_mappings=((0, uid, 1), (BUILD_UID, uid, 1)),
                  gid_mappings=((0, gid, 1), (BUILD_GID, gid, 1)))
