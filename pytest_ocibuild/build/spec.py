"""OCI runtime-spec ``config.json`` for a BuildRequest (after tvix's ``oci/spec.rs``).

``make_spec`` is pure but for the caller's euid (cgroup limits need root). Paths in the spec
are relative to the bundle directory (runc resolves relative ``root.path`` and bind-mount
sources against it):

- ``root/``: the read-only skeleton mounted at ``/`` (see bundle.make_bundle);
- ``inputs/``: where the input provider serves the request's inputs;
- ``scratch/<scratch_name(p)>/``: one writable directory per scratch path ``p``;
- ``caches/<name>``: the build's private writable clone of persistent cache ``name``.

- ``dev/``: the build's ``/dev`` (symlinks and mount points, see bundle.make_bundle).

Mount order (later mounts cover earlier ones): ``/proc``, ``/dev`` and the devices in it,
scratch paths
(parents before children, as ``scratch_paths`` is sorted), caches (by path), inputs,
read-only host paths, ``/bin/sh``, network files. When ``inputs_dir`` is a scratch path or
lies inside one (Nix: both are ``nix/store``), each input is bound read-only on its own at
``/<inputs_dir>/<name>`` on top of the writable scratch mount, so the build may add entries
next to its inputs but cannot change them (tvix does this for every input); symlink inputs are
not bound (runc would follow them on the host) but created as symlinks in the scratch
directory.
Otherwise ``inputs/`` is bound as a whole, read-only, at ``/<inputs_dir>``. A scratch path
strictly inside ``inputs_dir`` is refused: its mount point would have to be created inside
the read-only inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pytest_ocibuild.build.bundle import DEV_SOURCE, scratch_name
from pytest_ocibuild.build.ids import BUILD_GID, BUILD_UID, IdMaps
from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.build.request import BuildRequest, is_path_prefix
from pytest_ocibuild.build.seccomp import seccomp_profile
from pytest_ocibuild.castore.nodes import SymlinkNode
from pytest_ocibuild.errors import InvalidRequest

OCI_VERSION = "1.0.2"
SANDBOX_SHELL = "/bin/busybox"
NETWORK_FILES: tuple[str, ...] = ("/etc/resolv.conf", "/etc/services", "/etc/hosts")

# The build process holds no capabilities at all (effective, permitted, inheritable and
# ambient are empty), as a Nix builder (uid 1000) holds none. tvix grants a rootless set
# (SETUID, DAC_OVERRIDE, ... also ambient); in our user namespace container 0 maps to the
# caller, so those would let a hostile build become the caller on every writable mount.
BUILD_CAPABILITIES: tuple[str, ...] = ()
# The bounding set stays full, as Nix leaves it (CapBnd is visible to the build). It grants
# nothing: a uid-1000 process with no permitted capabilities and no_new_privs cannot gain any
# by execve. Names the kernel or runc does not know are skipped by runc with a warning.
BOUNDING_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# Host device nodes bound into /dev (Nix's set; /dev/kvm is not bound).
DEVICES: tuple[str, ...] = (
    "/dev/full", "/dev/null", "/dev/random", "/dev/tty", "/dev/urandom", "/dev/zero",
)


def make_spec(
    request: BuildRequest,
    *,
    id_maps: IdMaps,
    rootless: bool = True,
    sandbox_shell: str | None = SANDBOX_SHELL,
    network_files: Sequence[str] = NETWORK_FILES,
    limits: Limits | None = None,
    cgroups: bool | None = None,
) -> dict[str, Any]:
    """The runtime spec for ``request`` as a JSON-able dict (no IO).

    ``limits``: every field set (default: ``request.limits`` with the defaults of
    build.limits). ``cgroups``: the runtime may create cgroups (default: when root): pids
    and memory are cgroup limits; otherwise (a normal user on cgroup v1) pids is
    ``RLIMIT_NPROC`` and memory is not limited. ``RLIMIT_FSIZE`` caps each file at ``limits.disk``.

    ``rootless`` adds a user namespace with ``id_maps`` (required when runc runs unprivileged;
    used as root too, so the build's uid 1000 is not host root). ``sandbox_shell`` is the host
    file bound at ``/bin/sh`` when ``constraints.provide_bin_sh`` (None: refuse such requests).
    ``network_files`` are bound read-only when ``constraints.network_access``; pass
    ``host_network_files()`` to leave out the ones this host lacks.
    """
    c = request.constraints
    limits = limits or request.limits.resolved(c.min_memory)
    if cgroups is None:
        cgroups = os.geteuid() == 0  # the one thing read from the host: who runs runc
    linux = _linux(network=c.network_access, rootless=rootless, id_maps=id_maps)
    if cgroups:
        linux["resources"] = {
            "pids": {"limit": limits.pids},
            # swap is memory + swap in the OCI spec: equal to the limit, so no swap
            "memory": {"limit": limits.memory, "swap": limits.memory},
        }
    return {
        "ociVersion": OCI_VERSION,
        "process": _process(request, limits, cgroups),
        # Writable like Nix's chroot, but only /tmp (1777) is writable by the build user
        "root": {"path": "root", "readonly": False},
        "hostname": "localhost",
        "mounts": make_mounts(
            request, rootless=rootless, sandbox_shell=sandbox_shell,
            network_files=network_files if c.network_access else (),
        ),
        "linux": linux,
    }


def host_network_files(candidates: Sequence[str] = NETWORK_FILES) -> tuple[str, ...]:
    """Those of ``candidates`` that exist on this host (the only IO helper here)."""
    return tuple(p for p in candidates if os.path.exists(p))


def env_strings(request: BuildRequest) -> list[str]:
    """``KEY=VALUE`` strings; JSON (and so runc) cannot carry non-UTF-8 values: refused."""
    out = []
    for e in request.environment_vars:
        try:
            value = e.value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"environment_vars: {e.key} is not valid UTF-8, which an OCI config.json "
                "cannot carry"
            ) from None
        out.append(f"{e.key}={value}")
    return out


def _process(request: BuildRequest, limits: Limits, cgroups: bool) -> dict[str, Any]:
    caps = list(BUILD_CAPABILITIES)
    rlimits = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
               # one byte more than the budget: a file stopped there is over it (budget.py)
               {"type": "RLIMIT_FSIZE", "hard": limits.disk + 1, "soft": limits.disk + 1}]
    if not cgroups:
        rlimits.append({"type": "RLIMIT_NPROC", "hard": limits.pids, "soft": limits.pids})
    capabilities = {k: list(caps) for k in ("effective", "inheritable", "permitted", "ambient")}
    return {
        "terminal": False,  # stdin is /dev/null, output goes to a log file
        "user": {"uid": BUILD_UID, "gid": BUILD_GID},
        "args": list(request.command_args),
        "env": env_strings(request),
        "cwd": "/" + request.working_dir,
        "capabilities": {"bounding": list(BOUNDING_CAPABILITIES), **capabilities},
        "rlimits": rlimits,
        "noNewPrivileges": True,
    }


def _linux(*, network: bool, rootless: bool, id_maps: IdMaps) -> dict[str, Any]:
    # No cgroup namespace, unlike tvix's first version: it breaks runc when nested inside
    # another container (fixed later in tvix/snix; see facts.md).
    kinds = ["pid", "ipc", "uts", "mount"]
    if not network:
        kinds.append("network")
    if rootless:
        kinds.append("user")
    linux: dict[str, Any] = {"namespaces": [{"type": k} for k in kinds]}
    if rootless:
        linux.update(id_maps.to_spec())
    # No maskedPaths/readonlyPaths: Nix masks nothing in /proc (and runc's masks would show
    # as mount points). The files they cover belong to host root, unwritable by the build.
    linux["seccomp"] = seccomp_profile()
    return linux


def _mount(src: str, dst: str, typ: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": dst, "type": typ, "source": src, "options": list(options)}


def default_mounts(*, rootless: bool) -> list[dict[str, Any]]:
    """/proc, /dev (with its devices), /dev/pts, /dev/shm: what Nix's sandbox has.

    /dev is the bundle's ``dev/`` directory, not a tmpfs: a bind mount at /dev tells runc not
    to populate /dev itself (its devices, ``ptmx -> pts/ptmx``, ``/dev/core``), so it holds
    Nix's symlinks (``ptmx -> /dev/pts/ptmx``) and a bind of each host node in ``DEVICES``.
    No /dev/mqueue and no /sys (Nix has neither). Rootless: devpts without ``gid=5`` (gid 5
    is unmapped).
    """
    mounts = [
        _mount("proc", "/proc", "proc", []),
        _mount(DEV_SOURCE, "/dev", "none", ["rbind", "ro", "nosuid", "nodev", "noexec"]),
    ]
    # a plain bind (no remount): the host's flags (devtmpfs: nosuid) are kept
    mounts += [_mount(d, d, "none", ["bind"]) for d in DEVICES]
    mounts += [
        _mount("devpts", "/dev/pts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
               + ([] if rootless else ["gid=5"])),
        _mount("shm", "/dev/shm", "tmpfs",
               ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ]
    return mounts


def inputs_per_name(request: BuildRequest) -> bool:
    """True when inputs are bound one by one (``inputs_dir`` within a scratch path)."""
    return any(is_path_prefix(s, request.inputs_dir) for s in request.scratch_paths)


def make_mounts(
    request: BuildRequest,
    *,
    rootless: bool = True,
    sandbox_shell: str | None = SANDBOX_SHELL,
    network_files: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The ``mounts`` list of the spec, in mount order (see the module docstring)."""
    c = request.constraints
    for s in request.scratch_paths:
        if s != request.inputs_dir and is_path_prefix(request.inputs_dir, s):
            raise InvalidRequest(
                f"scratch_paths: {s!r} is inside inputs_dir {request.inputs_dir!r}, which is "
                "read-only"
            )
    # /tmp is a 1777 directory of the (writable) root/, as in Nix's chroot: no mount
    mounts = default_mounts(rootless=rootless)
    for p in request.scratch_paths:
        mounts.append(_mount(f"scratch/{scratch_name(p)}", "/" + p, "none", ["rbind", "rw"]))
    for cache in sorted(request.caches, key=lambda c: c.path.encode()):
        # bundle.make_bundle links caches/<name> to the build's private clone of the cache
        mounts.append(_mount(f"caches/{cache.name}", "/" + cache.path, "none",
                             ["rbind", "rw", "nosuid", "nodev"]))
    # "nosuid" (and "nodev") are required in a user namespace, otherwise the bind fails with
    # a generic permission error.
    ro_input = ["rbind", "ro", "nosuid", "nodev"]
    if inputs_per_name(request):
        for name, node in request.inputs.items():
            if isinstance(node, SymlinkNode):
                continue  # bundle.make_bundle creates the symlink itself in the scratch dir
            mounts.append(_mount(f"inputs/{name}", f"/{request.inputs_dir}/{name}", "none",
                                 ro_input))
    else:
        mounts.append(_mount("inputs", "/" + request.inputs_dir, "none", ro_input))
    for p in c.available_ro_paths:
        mounts.append(_mount(p, p, "none", ["rbind", "ro", "nosuid", "nodev"]))
    if c.provide_bin_sh:
        if sandbox_shell is None:
            raise InvalidRequest("constraints.provide_bin_sh: no sandbox shell is configured")
        mounts.append(_mount(sandbox_shell, "/bin/sh", "none", ["rbind", "ro", "nosuid", "nodev"]))
    for p in network_files:
        mounts.append(_mount(p, p, "none", ["rbind", "ro", "nosuid", "nodev"]))
    return mounts
