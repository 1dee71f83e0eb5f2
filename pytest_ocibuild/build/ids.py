"""User-namespace id maps for build containers (container root, build user 1000, group 100).

Inside the sandbox the build runs as uid 1000 / gid 100 (like Nix). The user namespace maps:

- container 0 -> the caller's euid/egid, so files the runtime creates belong to the caller;
- container 1000 (uid) / 100 (gid) -> the first id of the caller's ``/etc/subuid`` /
  ``/etc/subgid`` range (first line whose first field is the user's name or numeric uid).

Without a matching line, root maps 1000 -> 1000 and 100 -> 100: root may write any mapping
into ``/proc/<pid>/uid_map``, and the build user then owns its files as host uid 1000 (which
is also what the build sees). An unprivileged caller without a subuid line cannot map a
second id at all, so ``detect`` raises RuntimeUnavailable saying which line to add.
(Unprivileged runc also needs ``newuidmap``/``newgidmap`` from the ``uidmap`` package.)
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.errors import RuntimeUnavailable

BUILD_UID = 1000
BUILD_GID = 100

SUBUID_PATH = Path("/etc/subuid")
SUBGID_PATH = Path("/etc/subgid")

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
    ) -> IdMaps:
        """Maps for the calling process (parameters override euid, egid, user name, files)."""
        uid = os.geteuid() if uid is None else uid
        gid = os.getegid() if gid is None else gid
        if user is None:
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = None
        names = {str(uid)} | ({user} if user else set())
        sub_uid = _first_subid(subuid_path, names)
        sub_gid = _first_subid(subgid_path, names)
        if sub_uid is None or sub_gid is None:
            if uid != 0:
                missing = subuid_path if sub_uid is None else subgid_path
                who = user or str(uid)
                raise RuntimeUnavailable(
                    f"no range for {who!r} in {missing}: add a line like "
                    f"'{who}:100000:65536' to /etc/subuid and /etc/subgid (or run as root)"
                )
            sub_uid = BUILD_UID if sub_uid is None else sub_uid
            sub_gid = BUILD_GID if sub_gid is None else sub_gid
        return cls(
            uid_mappings=_pair(uid, BUILD_UID, sub_uid),
            gid_mappings=_pair(gid, BUILD_GID, sub_gid),
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


def _first_subid(path: Path, names: set[str]) -> int | None:
    """Start of the first ``name:start:count`` line of ``path`` whose name is in ``names``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RuntimeUnavailable(f"cannot read {path}: {e.strerror}") from None
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in names:
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count >= 1:
            return start
    return None
