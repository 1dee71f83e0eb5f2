"""OCI bundle directory for a BuildRequest (after tvix's ``oci/bundle.rs``).

Layout of ``bundle_dir``::

    config.json                  the spec (see spec.make_spec)
    inputs/                      empty; the input provider serves the inputs here
    root/                        ``/`` (0750, group 100): etc/{passwd,group,hosts}, tmp/ (1777)
                                 + mount points
    dev/                         ``/dev``: symlinks fd, stdin, stdout, stderr, ptmx + mount points
                                 (or a symlink to a shared copy: see ``make_bundle``)
    scratch/<scratch_name(p)>/   one writable directory per scratch path p
    caches/<name>                symlink to the build's clone of persistent cache <name>

Scratch directories (and additional files) belong to the host ids that the build user
(uid 1000, gid 100 in the container) maps to, read from the spec's ``uidMappings`` /
``gidMappings``, as Nix's: the working directory mode 0700; a scratch path that is the
``inputs_dir`` (Nix's ``/nix/store``) 1775, owned by the caller and group 100, so the build
may add entries but not remove others'; any other scratch path 0755.

Who may enter (see build.ids): the bundle directory is 0700, or 0710 with container root's
host group when container root is not the caller (runc's init, running as container root,
must reach ``root/`` to mount it). ``root/`` belongs to the caller and the build group (0750);
when container root is another id it gets read and search through an ACL entry (as Nix's
chroot, owned by host root, it then shows as 65534:100 inside), or owns ``root/`` where the
file system has no ACLs. Clones of persistent caches that earlier builds (other build slots,
so other host uids) wrote are given to this build's user.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.beneath import Confined, open_beneath
from pytest_ocibuild.build.ids import BUILD_GID, BUILD_UID, is_build_id
from pytest_ocibuild.build.request import BuildRequest, is_path_prefix
from pytest_ocibuild.castore.nodes import FileNode, SymlinkNode
from pytest_ocibuild.errors import BundleError

# What Nix writes into its sandbox (root and nixbld are uid 0 and 1000, group nixbld is 100).
ETC_PASSWD = (
    "root:x:0:0:Nix build user:/build:/noshell\n"
    "nixbld:x:1000:100:Nix build user:/build:/noshell\n"
    "nobody:x:65534:65534:Nobody:/:/noshell\n"
)
ETC_GROUP = "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
ETC_HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
ETC_NSSWITCH = "hosts: files dns\nservices: files\n"  # with network access only
DEV_SOURCE = "dev"  # the bundle directory bound at /dev (spec.default_mounts)
TMP_MODE = 0o1777  # the root's /tmp
# Symlinks in /dev, as Nix makes them (runc would make ptmx -> pts/ptmx and /dev/core).
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"), ("ptmx", "/dev/pts/ptmx"), ("stderr", "/proc/self/fd/2"),
    ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
)


@functools.lru_cache(maxsize=1024)
def scratch_name(path: str) -> str:
    """Directory name under ``scratch/`` for scratch path ``path``: base32 of blake3(path)."""
    return base64.b32encode(blake3.blake3(path.encode()).digest()).decode()


def find_path_in_scratch(path: str, scratch_paths: Sequence[str]) -> tuple[str, str] | None:
    """``(scratch_path, relative_rest)`` for the longest scratch path containing ``path``.

    Only whole components match (``nix/sto`` does not contain ``nix/store/x``). ``path``
    equal to a scratch path gives an empty rest. None if no scratch path contains it.
    """
    best: str | None = None
    for s in scratch_paths:
        if is_path_prefix(s, path) and (best is None or len(s) > len(best)):
            best = s
    if best is None:
        return None
    return best, path[len(best) + 1 :]


@dataclass(frozen=True, slots=True)
class BundleLayout:
    """Host paths of a bundle made by ``make_bundle``."""

    bundle_dir: Path
    request: BuildRequest = field(repr=False)
    rootfs: Path | None = None  # the root filesystem when it is not the bundle's own root/

    @property
    def config_path(self) -> Path:
        return self.bundle_dir / "config.json"

    @property
    def inputs_dir(self) -> Path:
        """Where inputs must be provided (mounted at ``/<inputs_dir>`` in the container)."""
        return self.bundle_dir / "inputs"

    @property
    def root_dir(self) -> Path:
        return self.rootfs if self.rootfs is not None else self.bundle_dir / "root"

    @property
    def scratch_dirs(self) -> dict[str, Path]:
        """Scratch path -> host directory."""
        return {p: self.scratch_dir(p) for p in self.request.scratch_paths}

    def scratch_dir(self, scratch_path: str) -> Path:
        return self.bundle_dir / "scratch" / scratch_name(scratch_path)

    def host_path(self, path: str) -> Path:
        """Host path of container path ``/<path>`` inside a scratch path (BundleError if not)."""
        found = find_path_in_scratch(path, self.request.scratch_paths)
        if found is None:
            raise BundleError(f"{path!r} is not inside any scratch path")
        scratch, rest = found
        base = self.scratch_dir(scratch)
        return base / rest if rest else base

    def output_host_path(self, output: str) -> Path:
        """Where output ``output`` (an element of ``request.outputs``) appears on the host.

        Only for showing a path: read what the build wrote through ``open_output``, which
        follows no symlink the build made."""
        return self.host_path(output)

    def open_output(self, output: str) -> contextlib.AbstractContextManager[Confined | None]:
        """Output ``output`` reached beneath its scratch directory (see build.beneath)."""
        found = find_path_in_scratch(output, self.request.scratch_paths)
        if found is None:
            raise BundleError(f"{output!r} is not inside any scratch path")
        return open_beneath(self.scratch_dir(found[0]), found[1], output=output)


def make_bundle(
    request: BuildRequest,
    spec: dict[str, Any],
    bundle_dir: Path,
    *,
    cache_dirs: Mapping[str, Path] | None = None,
    shared_dir: Path | None = None,
    rootfs: Path | None = None,
    reuse: bool = False,
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
    taken as they are and whose config.json is overwritten. Raises BundleError.
    """
    layout = BundleLayout(Path(bundle_dir), request,
                          None if rootfs is None else Path(rootfs).absolute())
    missing = {c.name for c in request.caches} - set(cache_dirs or {})
    if missing:
        raise BundleError(f"no directory given for cache(s) {', '.join(sorted(missing))}")
    try:
        _make(layout, spec, cache_dirs or {}, shared_dir, reuse)
    except OSError as e:
        raise BundleError(f"cannot create bundle in {bundle_dir}: {e}") from e
    return layout


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
        _chown_or_keep(root, self.owner, 0o750)
        if self.reader is not None:
            _let_read(root, self.reader, self.owner)
        (root / "tmp").mkdir()
        os.chmod(root / "tmp", TMP_MODE)
        etc = root / "etc"
        etc.mkdir()
        for name, text in self.etc:
            (etc / name).write_text(text)
        for rel, is_file, mode in self.points:
            point = _ensure(root, rel, is_file)
            if mode is not None:
                os.chmod(point, mode)


@dataclass(frozen=True, slots=True)
class BundleShell:
    """The directories of a bundle that outlive its build unchanged but for their contents:
    the bundle directory, ``inputs/`` (which the input provider leaves empty) and
    ``scratch/<name>/`` for each scratch path. Requests with the same scratch paths (``key``)
    can reuse one shell, one build at a time (``make_bundle(..., reuse=True)``), instead of
    creating and deleting these directories for every build: on file systems that scan
    recently freed inodes on every allocation (ext4 without a journal), that churn made
    each build several milliseconds slower the more builds had run in the last minute."""

    names: tuple[str, ...]  # scratch_name of each scratch path

    @classmethod
    def of(cls, request: BuildRequest) -> BundleShell:
        return cls(tuple(scratch_name(p) for p in request.scratch_paths))

    @property
    def key(self) -> str:
        return "bundle-" + blake3.blake3("/".join(self.names).encode()).hexdigest()[:25]

    def make(self, bundle: Path) -> None:
        """Create the shell at ``bundle`` (which must not exist)."""
        bundle.mkdir()
        (bundle / "inputs").mkdir()
        (bundle / "scratch").mkdir()
        for name in self.names:
            (bundle / "scratch" / name).mkdir()

    def mark(self, bundle: Path) -> tuple[int, ...]:
        """What ``reset`` checks the shell against: its directories' inode numbers."""
        return tuple(os.lstat(p).st_ino for p in self._dirs(bundle))

    def reset(self, bundle: Path, made: tuple[int, ...]) -> bool:
        """Empty the scratch directories after a build; False (remove the shell instead) if
        anything is not as ``make`` left it: a directory replaced, ``inputs/`` not empty, or
        entries other than the shell's, config.json and a ``dev`` symlink."""
        try:
            if tuple(os.lstat(p).st_ino for p in self._dirs(bundle)) != made:
                return False
            extra = set(os.listdir(bundle)) - {"inputs", "scratch", "config.json", DEV_SOURCE}
            if extra or set(os.listdir(bundle / "scratch")) != set(self.names) \
                    or os.listdir(bundle / "inputs"):
                return False
            if os.path.lexists(bundle / DEV_SOURCE) and not os.path.islink(bundle / DEV_SOURCE):
                return False
            for name in self.names:
                scratch = bundle / "scratch" / name
                os.chmod(scratch, 0o700)  # the build may have made it read-only
                with os.scandir(scratch) as it:
                    entries = [e.name for e in it]
                for entry in entries:
                    remove_tree(scratch / entry)
                if os.listdir(scratch):
                    return False
        except OSError:
            return False
        return True

    def _dirs(self, bundle: Path) -> list[Path]:
        return [bundle, bundle / "inputs", bundle / "scratch",
                *(bundle / "scratch" / n for n in self.names)]


def root_skeleton(request: BuildRequest, spec: dict[str, Any]) -> RootSkeleton:
    """The skeleton of ``root/`` for ``request`` run with ``spec`` (see RootSkeleton)."""
    layout = BundleLayout(Path("."), request)
    etc = [("passwd", ETC_PASSWD), ("group", ETC_GROUP), ("hosts", ETC_HOSTS)]
    if request.constraints.network_access:  # as Nix writes it for fixed-output builds
        etc.append(("nsswitch.conf", ETC_NSSWITCH))
    points = tuple((rel, is_file, mode) for where, _, rel, is_file, mode
                   in _mount_points(layout, spec.get("mounts", [])) if where == "root")
    croot = _host_id(spec, "uidMappings", 0)
    return RootSkeleton(owner=(_caller_or(croot), build_owner(spec)[1]), etc=tuple(etc),
                        points=points, reader=None if croot == _caller_or(croot) else croot)


def build_owner(spec: dict[str, Any]) -> tuple[int, int]:
    """Host ``(uid, gid)`` of the build user (container 1000:100) under ``spec``'s id maps."""
    return _host_id(spec, "uidMappings", BUILD_UID), _host_id(spec, "gidMappings", BUILD_GID)


def _make(
    layout: BundleLayout, spec: dict[str, Any], cache_dirs: Mapping[str, Path],
    shared_dir: Path | None, reuse: bool = False,
) -> None:
    request = layout.request
    layout.bundle_dir.mkdir(parents=True, exist_ok=True)
    if layout.config_path.exists() and not reuse:
        raise BundleError(f"{layout.bundle_dir} already holds a bundle")

    def mkdir(path: Path) -> None:
        if not (reuse and path.is_dir() and not path.is_symlink()):
            path.mkdir()

    _restrict(layout.bundle_dir, _host_id(spec, "gidMappings", 0))
    owner = build_owner(spec)
    root_owner = (_caller_or(_host_id(spec, "uidMappings", 0)), owner[1])
    mkdir(layout.inputs_dir)
    mounts = spec.get("mounts", [])
    points = _mount_points(layout, mounts)
    if layout.rootfs is None:
        root_skeleton(request, spec).make(layout.root_dir)
    else:
        spec = {**spec, "root": {**spec.get("root", {}), "path": str(layout.rootfs)}}
    mkdir(layout.bundle_dir / "scratch")
    for p in request.scratch_paths:
        d = layout.scratch_dir(p)
        mkdir(d)
        if p == request.inputs_dir:
            _chown_or_keep(d, root_owner, 0o1775)
        else:
            _chown(d, owner, 0o700 if p == request.working_dir else 0o755)
    _make_working_dir(layout, owner)
    if any(m.get("source") == DEV_SOURCE for m in mounts):
        dev = layout.bundle_dir / DEV_SOURCE
        target = None if shared_dir is None else _shared_dev(dev.name, points, Path(shared_dir))
        if reuse and os.path.lexists(dev):  # a shell's, made for an earlier bundle
            if target is not None and dev.is_symlink() and os.readlink(dev) == str(target):
                target = None  # already the right one
            else:
                remove_tree(dev)
        if shared_dir is None:
            _make_dev(dev, points)
        elif target is not None:
            os.symlink(target, dev)
    _make_points(points, "scratch")
    _symlink_inputs(layout, mounts)
    for f in request.additional_files:
        _write_additional(layout, f.path, f.contents, owner)
    if request.caches:
        (layout.bundle_dir / "caches").mkdir()
        for c in request.caches:
            _reown(Path(cache_dirs[c.name]), owner)
            # runc resolves the relative mount source here; the kernel follows the link
            os.symlink(os.path.abspath(cache_dirs[c.name]), layout.bundle_dir / "caches" / c.name)
    # Last, so that a half-made bundle is never mistaken for a finished one.
    layout.config_path.write_text(json.dumps(spec) + "\n")  # C encoder: no indent


def _make_dev(dev: Path, points: list[MountPoint]) -> None:
    """``dev``: Nix's symlinks and the mount points below /dev."""
    dev.mkdir()
    for name, target in DEV_SYMLINKS:
        os.symlink(target, dev / name)
    _make_points(points, "dev", dev)


def _shared_dev(name: str, points: list[MountPoint], shared_dir: Path) -> Path:
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
        _make_dev(tmp, points)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        if os.path.lexists(tmp):  # another process renamed its copy first
            remove_tree(tmp)
    return final


def _make_working_dir(layout: BundleLayout, owner: tuple[int, int]) -> None:
    """A working dir below a scratch path is made now, owned by the build user (runc would
    create it owned by container root, unwritable for the build)."""
    found = find_path_in_scratch(layout.request.working_dir, layout.request.scratch_paths)
    if found is None or not found[1]:
        return  # outside every scratch path (read-only), or a scratch path itself
    base = layout.scratch_dir(found[0])
    cur = base
    for part in found[1].split("/"):
        cur = cur / part
        if not cur.exists():
            cur.mkdir()
            _chown(cur, owner, 0o755)


def _caller_or(container_root: int) -> int:
    """Owner of what container root would own: the caller when it runs as root and
    container root is another id (so that id is no owner of anything), else container root."""
    return os.geteuid() if os.geteuid() == 0 else container_root


def _restrict(bundle_dir: Path, root_gid: int) -> None:
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


def _let_read(root: Path, uid: int, owner: tuple[int, int]) -> None:
    """Give ``uid`` read and search on ``root`` (mode 0750) by an ACL entry, keeping the mode
    as the build sees it; where the file system has no ACLs, ``uid`` owns ``root``."""
    entries = ((0x01, 7, _ACL_ANY), (0x02, 5, uid), (0x04, 5, _ACL_ANY), (0x10, 5, _ACL_ANY),
               (0x20, 0, _ACL_ANY))  # user::rwx user:uid:r-x group::r-x mask::r-x other::---
    try:
        os.setxattr(root, "system.posix_acl_access",
                    _ACL_HEADER + b"".join(struct.pack("<HHI", *e) for e in entries))
    except OSError:
        _chown_or_keep(root, (uid, owner[1]), 0o750)


def _reown(top: Path, owner: tuple[int, int]) -> None:
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


def _host_id(spec: dict[str, Any], key: str, container_id: int) -> int:
    maps = spec.get("linux", {}).get(key)
    if not maps:  # no user namespace: ids are the host's
        return container_id
    for m in maps:
        if m["containerID"] <= container_id < m["containerID"] + m["size"]:
            return int(m["hostID"]) + container_id - int(m["containerID"])
    raise BundleError(f"linux.{key} does not map container id {container_id}")


def _chown(path: Path, owner: tuple[int, int], mode: int) -> None:
    """Give ``path`` to the build user; an unprivileged caller falls back to world-writable."""
    try:
        os.lchown(path, *owner)
    except PermissionError:
        if not path.is_symlink():
            os.chmod(path, mode | 0o777 if path.is_dir() else mode | 0o666)
        return
    if not path.is_symlink():
        os.chmod(path, mode)


def _chown_or_keep(path: Path, owner: tuple[int, int], mode: int) -> None:
    """``_chown``, but an unprivileged caller keeps the directory its own (not world-writable):
    container root is the caller then."""
    with contextlib.suppress(PermissionError):
        os.chown(path, *owner)
    os.chmod(path, mode)


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
            _chown(d, owner, 0o755)
    target.write_bytes(contents)
    _chown(target, owner, 0o644)


# A mount point to make: (on what: "root", "dev" or "scratch"; the scratch directory or None;
# path below it; is a file; mode for a tmpfs mounted there or None)
MountPoint = tuple[str, "Path | None", str, bool, "int | None"]


def _mount_points(layout: BundleLayout, mounts: list[dict[str, Any]]) -> list[MountPoint]:
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


def _make_points(points: list[MountPoint], where: str, base: Path | None = None) -> None:
    """Create the mount points on ``where`` (below ``base``, or their scratch directory)."""
    for on, scratch, rel, is_file, mode in points:
        if on != where:
            continue
        point = _ensure(base if base is not None else scratch, rel, is_file)  # type: ignore[arg-type]
        if mode is not None:
            os.chmod(point, mode)


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


def _ensure(base: Path, rel: str, is_file: bool) -> Path:
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
