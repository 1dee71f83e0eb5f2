"""Mount points a bundle must hold: each mount's destination, derived from the spec's mounts,
made in whatever lies below it (``root/``, ``dev/`` or a scratch directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.bundle.layout import DEV_SOURCE, BundleLayout
from pytest_ocibuild.build.request import is_path_prefix
from pytest_ocibuild.castore.nodes import FileNode
from pytest_ocibuild.errors import BundleError

# A mount point to make: (on what: "root", "dev" or "scratch"; the scratch directory or None;
# path below it; is a file; mode for a tmpfs mounted there or None)
MountPoint = tuple[str, "Path | None", str, bool, "int | None"]


def mount_points(layout: BundleLayout, mounts: list[dict[str, Any]]) -> list[MountPoint]:
    """Each mount's destination, in whatever lies below it: ``/`` (root/), the /dev mount
    (dev/) or a scratch dir.

    Mount points on top of other mounts without a host directory (tmpfs, host binds) are
    left to runc.
    """
    backing: list[tuple[str, str | None, Path | None]] = [("/", "root", None)]
    scratch_by_dest = {"/" + p: layout.scratch_dir(p) for p in layout.request.scratch_paths}
    points: list[MountPoint] = []
    for m in mounts:
        dest = m["destination"]
        under = [b for b in backing if b[0] == "/" or is_path_prefix(b[0], dest)][-1]
        is_file = _is_file_source(layout, m)
        if under[1] is not None and dest != under[0]:
            points.append((under[1], under[2], dest[len(under[0]) :].lstrip("/"), is_file,
                           _tmpfs_mode(m)))
        src = m.get("source", "")
        if src.startswith("scratch/") and dest in scratch_by_dest:
            backing.append((dest, "scratch", scratch_by_dest[dest]))
        else:
            backing.append((dest, "dev" if src == DEV_SOURCE else None, None))
    return points


def make_points(points: list[MountPoint], where: str, base: Path | None = None) -> None:
    """Create the mount points on ``where`` (below ``base``, or their scratch directory)."""
    for on, scratch, rel, is_file, mode in points:
        if on != where:
            continue
        point = ensure(base if base is not None else scratch, rel, is_file)  # type: ignore[arg-type]
        if mode is not None:
            os.chmod(point, mode)


def ensure(base: Path, rel: str, is_file: bool) -> Path:
    """Create ``base/rel`` (a directory, or an empty file) without following symlinks out."""
    parts = rel.split("/")
    cur = base
    for i, part in enumerate(parts):
        cur = cur / part
        last = i == len(parts) - 1
        if cur.is_symlink():
            raise BundleError(f"mount point {cur} is a symlink")
        if cur.exists():
            continue
        if last and is_file:
            cur.touch()
        else:
            cur.mkdir()
    return cur


def _is_file_source(layout: BundleLayout, mount: dict[str, Any]) -> bool:
    src = mount.get("source", "")
    if mount.get("type") not in ("none", "bind") or "bind" not in " ".join(
        mount.get("options", [])
    ):
        return False
    if src.startswith("inputs/"):
        return isinstance(layout.request.inputs.get(src[len("inputs/") :]), FileNode)
    if src.startswith("/"):
        if not os.path.exists(src):
            raise BundleError(f"mount source {src} (for {mount['destination']}) does not exist")
        return not os.path.isdir(src)
    return False


def _tmpfs_mode(mount: dict[str, Any]) -> int | None:
    """runc gives a tmpfs the mode of its mount point, overriding ``mode=``: the mode to set
    there (None: not a tmpfs, or no mode)."""
    if mount.get("type") != "tmpfs":
        return None
    for opt in mount.get("options", []):
        if opt.startswith("mode="):
            return int(opt[len("mode=") :], 8)
    return None
