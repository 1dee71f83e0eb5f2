"""The bundle's ``root/`` (``/``): a skeleton that requests with equal keys can share.

``root/`` belongs to the caller and the build group (0750); when container root is another
id it gets read and search through an ACL entry (as Nix's chroot, owned by host root, it then
shows as 65534:100 inside), or owns ``root/`` where the file system has no ACLs.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import blake3

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.bundle.mounts import ensure
from pytest_ocibuild.build.bundle.owners import chown_or_keep, let_read

# What Nix writes into its sandbox (root and nixbld are uid 0 and 1000, group nixbld is 100).
ETC_PASSWD = (
    "root:x:0:0:Nix build user:/build:/noshell\n"
    "nixbld:x:1000:100:Nix build user:/build:/noshell\n"
    "nobody:x:65534:65534:Nobody:/:/noshell\n"
)
ETC_GROUP = "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
ETC_HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
ETC_NSSWITCH = "hosts: files dns\nservices: files\n"  # with network access only
TMP_MODE = 0o1777  # the root's /tmp


def etc_files(network_access: bool) -> tuple[tuple[str, str], ...]:
    """The files of ``/etc``: (name, contents)."""
    etc = [("passwd", ETC_PASSWD), ("group", ETC_GROUP), ("hosts", ETC_HOSTS)]
    if network_access:  # as Nix writes it for fixed-output builds
        etc.append(("nsswitch.conf", ETC_NSSWITCH))
    return tuple(etc)


@dataclass(frozen=True, slots=True)
class RootSkeleton:
    """What ``make_bundle`` puts into ``root/`` (``/``) for a request: the directory (0750,
    container root and group 100), ``tmp/`` (1777), the /etc files and the mount points that
    lie on ``/`` itself. Requests with equal skeletons (``key``) can share one root, one build
    at a time (``make_bundle(rootfs=...)``) if the build cannot have changed anything in it but
    ``tmp/``'s contents: not when a mount point lies in ``tmp/`` (``reusable``)."""

    owner: tuple[int, int]
    etc: tuple[tuple[str, str], ...]
    points: tuple[tuple[str, bool, int | None], ...]  # (path in root, is a file, tmpfs mode)
    reader: int | None = None  # container root's host uid when it is not ``owner``'s uid

    @property
    def key(self) -> str:
        return blake3.blake3(json.dumps([self.owner, self.etc, self.points, self.reader]
                                        ).encode()).hexdigest()[:32]

    @property
    def reusable(self) -> bool:
        return not any(rel == "tmp" or rel.startswith("tmp/") for rel, _, _ in self.points)

    def mark(self, root: Path) -> os.stat_result:
        """What ``reset`` checks the root against: the lstat of its ``tmp/``."""
        return os.lstat(root / "tmp")

    def reset(self, root: Path, made: os.stat_result) -> bool:
        """Empty ``root/tmp`` (the one thing a build can change); False if that did not work
        or ``tmp/`` is no longer the directory made (inode, owner or mode changed)."""
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

    def make(self, root: Path) -> None:
        """Create the skeleton at ``root`` (which must not exist)."""
        root.mkdir()
        chown_or_keep(root, self.owner, 0o750)
        if self.reader is not None:
            let_read(root, self.reader, self.owner)
        (root / "tmp").mkdir()
        os.chmod(root / "tmp", TMP_MODE)
        etc = root / "etc"
        etc.mkdir()
        for name, text in self.etc:
            (etc / name).write_text(text)
        for rel, is_file, mode in self.points:
            point = ensure(root, rel, is_file)
            if mode is not None:
                os.chmod(point, mode)
