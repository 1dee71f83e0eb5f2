"""The bundle's ``dev/`` (bound read-only at ``/dev``): Nix's symlinks and the mount points
below /dev, made per bundle or once in a shared directory and linked."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import blake3

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.bundle.mounts import MountPoint, make_points

# Symlinks in /dev, as Nix makes them (runc would make ptmx -> pts/ptmx and /dev/core).
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"), ("ptmx", "/dev/pts/ptmx"), ("stderr", "/proc/self/fd/2"),
    ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
)


def place_dev(dev: Path, points: list[MountPoint], shared_dir: Path | None,
              reuse: bool) -> None:
    """Make ``dev`` (a bundle's ``dev/``): a directory of its own when ``shared_dir`` is None,
    else a symlink to the shared copy. With ``reuse``, what an earlier bundle left at ``dev``
    is kept if it is the right link, else replaced."""
    target = None if shared_dir is None else shared_dev(dev.name, points, Path(shared_dir))
    if reuse and os.path.lexists(dev):  # a shell's, made for an earlier bundle
        if target is not None and dev.is_symlink() and os.readlink(dev) == str(target):
            return  # already the right one
        remove_tree(dev)
    if target is None:
        make_dev(dev, points)
    else:
        os.symlink(target, dev)


def make_dev(dev: Path, points: list[MountPoint]) -> None:
    """``dev``: Nix's symlinks and the mount points below /dev."""
    dev.mkdir()
    for name, target in DEV_SYMLINKS:
        os.symlink(target, dev / name)
    make_points(points, "dev", dev)


def shared_dev(name: str, points: list[MountPoint], shared_dir: Path) -> Path:
    """``<shared_dir>/<name>-<key>``, made unless it exists (in a directory of its own,
    renamed into place: concurrent makers never see a half-made one); ``key`` digests its
    contents."""
    below = [(rel, is_file, mode) for where, _, rel, is_file, mode in points if where == "dev"]
    key = blake3.blake3(json.dumps([DEV_SYMLINKS, below]).encode()).hexdigest()[:32]
    final = shared_dir.absolute() / f"{name}-{key}"
    if final.is_dir():
        return final
    shared_dir.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}")
    try:
        make_dev(tmp, points)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        if os.path.lexists(tmp):  # another process renamed its copy first
            remove_tree(tmp)
    return final
