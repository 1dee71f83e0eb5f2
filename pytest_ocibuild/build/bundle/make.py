"""``plan_bundle`` (what a bundle for a request and spec holds, derived once) and
``make_bundle`` (write it into a directory)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.bundle.dev import place_dev
from pytest_ocibuild.build.bundle.layout import DEV_SOURCE, BundleLayout, find_path_in_scratch
from pytest_ocibuild.build.bundle.mounts import MountPoint, make_points, mount_points
from pytest_ocibuild.build.bundle.owners import (
    Owners,
    chown,
    chown_or_keep,
    deferred_chowns,
    reown,
    restrict,
)
from pytest_ocibuild.build.bundle.root import RootSkeleton, etc_files
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.castore.nodes import SymlinkNode
from pytest_ocibuild.errors import BundleError


@dataclass(frozen=True, slots=True)
class BundlePlan:
    """What a bundle for ``request`` run with ``spec`` holds, derived from them once: the
    host owners, the mount points (scratch ones relative to the bundle directory) and the
    root skeleton. Pass it to ``make_bundle(plan=...)`` to not derive it again."""

    request: BuildRequest = field(repr=False)
    spec: dict[str, Any] = field(repr=False)
    owners: Owners
    points: tuple[MountPoint, ...]
    skeleton: RootSkeleton

    def points_in(self, bundle_dir: Path) -> list[MountPoint]:
        """The mount points with scratch directories below ``bundle_dir``."""
        return [(on, None if s is None else bundle_dir / s, rel, is_file, mode)
                for on, s, rel, is_file, mode in self.points]


def plan_bundle(request: BuildRequest, spec: dict[str, Any], *,
                owners: Owners | None = None) -> BundlePlan:
    """The plan of a bundle for ``request`` and ``spec``; ``owners`` (default: read from the
    spec's id maps) as the caller knows them. Raises BundleError."""
    owners = Owners.of(spec) if owners is None else owners
    points = tuple(mount_points(BundleLayout(Path("."), request), spec.get("mounts", [])))
    skeleton = RootSkeleton(
        owner=owners.root_owner, etc=etc_files(request.constraints.network_access),
        points=tuple((rel, is_file, mode) for where, _, rel, is_file, mode in points
                     if where == "root"),
        reader=owners.reader)
    return BundlePlan(request, spec, owners, points, skeleton)


def root_skeleton(request: BuildRequest, spec: dict[str, Any]) -> RootSkeleton:
    """The skeleton of ``root/`` for ``request`` run with ``spec`` (see RootSkeleton)."""
    return plan_bundle(request, spec).skeleton


def make_bundle(
    request: BuildRequest,
    spec: dict[str, Any],
    bundle_dir: Path,
    *,
    cache_dirs: Mapping[str, Path] | None = None,
    shared_dir: Path | None = None,
    rootfs: Path | None = None,
    reuse: bool = False,
    plan: BundlePlan | None = None,
) -> BundleLayout:
    """Write ``spec`` and the directory skeleton for ``request`` into ``bundle_dir``.

    ``cache_dirs`` maps each of ``request.caches``' names to the host directory (the build's
    clone) that ``caches/<name>`` links to. ``shared_dir``: where bundles keep what they can
    share; ``dev/`` (bound read-only at /dev, the same for every build with the same device
    mounts) is then a symlink to ``<shared_dir>/dev-<key>``, made once (None: every bundle
    gets its own). ``rootfs``: a directory that ``root_skeleton(request, spec).make`` made
    (and nothing has changed but the contents of its ``tmp/``), used as the root filesystem
    instead of a new ``root/`` (the bundle's config.json names it in ``root.path``). It must
    be the only container's root at a time: the build may write to its ``/tmp``.
    ``bundle_dir`` may exist but must not hold a bundle already, unless ``reuse``: it is then a
    ``BundleShell`` that an earlier bundle left (``BundleShell.reset``), whose directories are
    taken as they are and whose config.json is overwritten. ``plan``: ``plan_bundle(request,
    spec)`` if the caller has it. Raises BundleError.
    """
    layout = BundleLayout(Path(bundle_dir), request,
                          None if rootfs is None else Path(rootfs).absolute())
    missing = {c.name for c in request.caches} - set(cache_dirs or {})
    if missing:
        raise BundleError(f"no directory given for cache(s) {', '.join(sorted(missing))}")
    if plan is None:
        plan = plan_bundle(request, spec)
    elif plan.request is not request or plan.spec is not spec:
        raise BundleError("make_bundle: the plan is for another request or spec")
    try:
        with deferred_chowns():  # a normal user's, once all is made
            _make(layout, plan, cache_dirs or {}, shared_dir, reuse)
    except OSError as e:
        raise BundleError(f"cannot create bundle in {bundle_dir}: {e}") from e
    return layout


def _make(
    layout: BundleLayout, plan: BundlePlan, cache_dirs: Mapping[str, Path],
    shared_dir: Path | None, reuse: bool = False,
) -> None:
    request, spec = layout.request, plan.spec
    layout.bundle_dir.mkdir(parents=True, exist_ok=True)
    if layout.config_path.exists() and not reuse:
        raise BundleError(f"{layout.bundle_dir} already holds a bundle")

    def mkdir(path: Path) -> None:
        if not (reuse and path.is_dir() and not path.is_symlink()):
            path.mkdir()

    restrict(layout.bundle_dir, plan.owners.root_gid)
    owner = plan.owners.build
    mkdir(layout.inputs_dir)
    mounts = spec.get("mounts", [])
    points = plan.points_in(layout.bundle_dir)
    if layout.rootfs is None:
        plan.skeleton.make(layout.root_dir)
    else:
        spec = {**spec, "root": {**spec.get("root", {}), "path": str(layout.rootfs)}}
    mkdir(layout.bundle_dir / "scratch")
    for p in request.scratch_paths:
        d = layout.scratch_dir(p)
        mkdir(d)
        if p == request.inputs_dir:
            chown_or_keep(d, plan.owners.root_owner, 0o1775)
        else:
            chown(d, owner, 0o700 if p == request.working_dir else 0o755)
    _make_working_dir(layout, owner)
    if any(m.get("source") == DEV_SOURCE for m in mounts):
        place_dev(layout.bundle_dir / DEV_SOURCE, points, shared_dir, reuse)
    make_points(points, "scratch")
    _symlink_inputs(layout, mounts)
    for f in request.additional_files:
        _write_additional(layout, f.path, f.contents, owner)
    if request.caches:
        (layout.bundle_dir / "caches").mkdir()
        for c in request.caches:
            reown(Path(cache_dirs[c.name]), owner)
            # runc resolves the relative mount source here; the kernel follows the link
            os.symlink(os.path.abspath(cache_dirs[c.name]), layout.bundle_dir / "caches" / c.name)
    # Last, so that a half-made bundle is never mistaken for a finished one.
    layout.config_path.write_text(json.dumps(spec) + "\n")  # C encoder: no indent


def _make_working_dir(layout: BundleLayout, owner: tuple[int, int]) -> None:
    """A working dir below a scratch path is made now, owned by the build user (runc would
    create it owned by container root, unwritable for the build)."""
    found = find_path_in_scratch(layout.request.working_dir, layout.request.scratch_paths)
    if found is None or not found[1]:
        return  # outside every scratch path (read-only), or a scratch path itself
    cur = layout.scratch_dir(found[0])
    for part in found[1].split("/"):
        cur = cur / part
        if not cur.exists():
            cur.mkdir()
            chown(cur, owner, 0o755)


def _write_additional(
    layout: BundleLayout, path: str, contents: bytes, owner: tuple[int, int]
) -> None:
    found = find_path_in_scratch(path, layout.request.scratch_paths)
    if found is None or not found[1]:
        raise BundleError(f"additional_files: {path!r} is not inside a scratch path")
    base = layout.scratch_dir(found[0])
    target = base / found[1]
    for parent in reversed(target.relative_to(base).parents[:-1]):
        d = base / parent
        if not d.exists():
            d.mkdir()
            chown(d, owner, 0o755)
    target.write_bytes(contents)
    chown(target, owner, 0o644)


def _symlink_inputs(layout: BundleLayout, mounts: list[dict[str, Any]]) -> None:
    """Per-name symlink inputs are not mounted (a bind mount would follow them on the host):
    the symlink itself is created in the scratch directory below."""
    request = layout.request
    bound = {m["destination"] for m in mounts}
    for name, node in request.inputs.items():
        if not isinstance(node, SymlinkNode):
            continue
        dest = f"/{request.inputs_dir}/{name}"
        if dest in bound:
            continue  # bound (whole inputs dir case never lists names)
        found = find_path_in_scratch(dest[1:], request.scratch_paths)
        if found is None:
            continue
        link = layout.scratch_dir(found[0]) / found[1]
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.fsdecode(node.target), link)
