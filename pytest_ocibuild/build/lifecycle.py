"""Purge what crashed runs left behind, safely while other processes keep building.

Everything a build creates carries its process id: containers and bundle directories are
``ocibuild-<pid>-<n>-<digest12>``, staging files ``<kind>.<pid>-<random>.<n>``, cache clones
``<pid>-<random>``. ``purge`` removes only what belongs to processes that no longer exist, so
xdist workers and parallel sessions sharing a store never lose work in flight. (A pid reused
by an unrelated process keeps its leftovers until a later purge; that errs on the safe side.)
Locks need no owner: the kernel drops a dead holder's flock, and lock files nobody holds are
deleted. Like OBuilder, which removes leftover containers when it starts.

A client killed alone is cleaned up after by its reaper within seconds (see reaper); what
``purge`` finds is what is left when the reaper died too (e.g. both were killed). Containers
are found in the per-user runc state dir and bundles in the per-user bundle root (see
locations), whatever store or basetemp the run that left them used.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_ocibuild.build.atomic import (
    older_than,
    pid_alive,
    remove_stale_lock,
    remove_tree,
    staging_pid,
)
from pytest_ocibuild.build.runtime.base import Purgeable

CONTAINER_PREFIX = "ocibuild-"
STAGING_MAX_AGE = 24 * 3600.0  # seconds; staging files of live writers older than this go too
CREATING_WAIT = 10.0  # seconds purge waits for containers still being created or deleted
CREATING_AGE = 60.0  # seconds; a dead owner's state directory older than this is not waited on
_OWNED = re.compile(r"ocibuild-(\d+)-.+")
_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass
class PurgeReport:
    """What ``purge`` removed (names or paths as strings)."""

    containers: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    caches: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.__dict__.values())

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.__dict__.items()}


def owner_pid(name: str) -> int | None:
    """The pid in an ``ocibuild-<pid>-...`` name, or None for other names."""
    m = _OWNED.fullmatch(name)
    return int(m.group(1)) if m else None


def _dead(name: str) -> bool:
    pid = owner_pid(name)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def purge(
    *,
    store_root: Path | None = None,
    bundle_root: Path | None = None,
    runtime: object = None,
    staging_age: float = STAGING_MAX_AGE,
) -> PurgeReport:
    """Clean up after crashed runs; see the module docstring.

    ``runtime``: if Purgeable (base), its state dir is checked for our containers.
    ``store_root``: castore root (staging, locks, caches).
    ``bundle_root``: where bundles are made (mounts, bundle directories).
    """
    report = PurgeReport()
    if isinstance(runtime, Purgeable):
        report.containers = purge_containers(runtime)
    if runtime is not None:
        report.cgroups = purge_cgroups()
    if bundle_root is not None and Path(bundle_root).is_dir():
        from pytest_ocibuild.build.root_pool import SHARED_DIR, purge_dead

        report.mounts = purge_mounts(Path(bundle_root))
        report.bundles = purge_bundles(Path(bundle_root))
        # pooled roots and bundle shells of dead processes (their containers are gone now)
        report.bundles += purge_dead(Path(bundle_root) / SHARED_DIR)
    if store_root is not None and Path(store_root).is_dir():
        root = Path(store_root)
        report.staging = purge_staging(root / "tmp", staging_age)
        report.locks = purge_locks(root / "locks")
        if (root / "caches").is_dir():
            from pytest_ocibuild.build.caches import CacheStore

            report.caches = [str(p) for p in CacheStore(root).purge()]
    return report


def purge_containers(runtime: Purgeable, wait: float = CREATING_WAIT) -> list[str]:
    """Kill and delete our containers whose creating process is gone.

    A killed client's reaper lives on while it has jobs, and may still be creating a container
    (runc makes ``<state>/<id>/`` first, and is listed some 20 ms later) or deleting one: while
    a state directory of a dead owner younger than ``CREATING_AGE`` is left, look again (for
    at most ``wait`` seconds).
    """
    gone = _purge_dead_owners(runtime)
    deadline = time.monotonic() + wait
    while _dead_owner_states(runtime) and time.monotonic() < deadline:
        time.sleep(0.05)
        gone += _purge_dead_owners(runtime)
    state = runtime.state_dir
    if Path(state).is_dir():
        for entry in Path(state).iterdir():
            if entry.name.endswith(".runc-log.json") and _dead(entry.name.split(".")[0]):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
    return gone


def purge_cgroups(root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """Remove the empty cgroups (``<controller>/ocibuild-<pid>-...``, cgroup v1 and v2) of
    containers whose creating process is gone, which a runtime killed while creating or
    deleting one leaves; a cgroup still holding a process cannot be removed (EBUSY)."""
    gone: list[str] = []
    if os.geteuid() != 0:  # a normal user's builds get no cgroups (build.limits)
        return gone
    with contextlib.suppress(OSError):
        controllers = [d for d in root.iterdir() if d.is_dir()]
        # runc's <controller>/<id>, bwrap's <controller>/ocibuild/<id> (runtime.bwrap)
        for hierarchy in [root, *controllers, *(d / "ocibuild" for d in controllers)]:
            with contextlib.suppress(OSError), os.scandir(hierarchy) as it:
                for entry in it:
                    if entry.name.startswith(CONTAINER_PREFIX) and _dead(entry.name) \
                            and entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            os.rmdir(entry.path)
                            gone.append(entry.path)
    return gone


def _purge_dead_owners(runtime: Purgeable) -> list[str]:
    gone = []
    for cid in runtime.list():
        if _dead(cid):
            gone += runtime.purge(cid)
    return gone


def _dead_owner_states(runtime: Purgeable) -> list[str]:
    """Recent container state directories (``<state>/<id>/``) of processes that are gone."""
    state = runtime.state_dir
    found = []
    now = time.time()
    try:
        with os.scandir(state) as it:
            for entry in it:
                if _dead(entry.name) and entry.is_dir(follow_symlinks=False) \
                        and now - entry.stat(follow_symlinks=False).st_mtime < CREATING_AGE:
                    found.append(entry.name)
    except OSError:
        return []
    return found


def mounts_under(root: Path) -> list[str]:
    """Mount points strictly below ``root`` (resolved), from /proc/self/mountinfo."""
    base = os.fsencode(os.path.realpath(root)) + b"/"
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), line.split(b" ")[4])
            if point.startswith(base):
                found.append(os.fsdecode(point))
    return found


def purge_mounts(bundle_root: Path) -> list[str]:
    """Detach mounts inside bundle directories of dead processes (deepest first), pooled
    bundle shells (``shared/bundles-<pid>-<hex>/...``) included."""
    from pytest_ocibuild.build.materialize import unmount
    from pytest_ocibuild.build.root_pool import pool_pid

    base = os.path.realpath(bundle_root)
    done = []
    for point in sorted(set(mounts_under(bundle_root)), key=len, reverse=True):
        parts = os.path.relpath(point, base).split("/")
        pid = owner_pid(parts[0])
        if pid is None and len(parts) > 2:
            pid = pool_pid(parts[1])
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            with contextlib.suppress(Exception):
                unmount(point, lazy=True)
            done.append(point)
    return done


def purge_bundles(bundle_root: Path) -> list[str]:
    """Remove bundle directories of dead processes (skipping any that still hold a mount)."""
    mounted = {os.path.relpath(p, os.path.realpath(bundle_root)).split("/", 1)[0]
               for p in mounts_under(bundle_root)}
    gone = []
    for entry in sorted(bundle_root.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and _dead(entry.name) and \
                entry.name not in mounted:
            remove_tree(entry)
            gone.append(entry.name)
    return gone


def purge_staging(tmp_dir: Path, max_age: float = STAGING_MAX_AGE) -> list[str]:
    """Remove staging files of dead writers, and any older than ``max_age`` seconds."""
    gone = []
    try:
        names = sorted(os.listdir(tmp_dir))
    except FileNotFoundError:
        return gone
    for name in names:
        pid = staging_pid(name)
        path = tmp_dir / name
        if (pid is not None and pid != os.getpid() and not pid_alive(pid)) or older_than(
            path, max_age
        ):
            remove_tree(path)
            gone.append(name)
    return gone


def purge_locks(locks_dir: Path) -> list[str]:
    """Delete lock files nobody holds."""
    gone = []
    try:
        names = sorted(os.listdir(locks_dir))
    except FileNotFoundError:
        return gone
    for name in names:
        if remove_stale_lock(locks_dir / name):
            gone.append(name)
    return gone
