"""OCI runtime-spec ``config.json`` for a BuildRequest (after tvix's ``oci/spec.rs``).

``make_spec`` is pure: it reads nothing from the host. Paths in the spec are relative to the
bundle directory (runc resolves relative ``root.path`` and bind-mount sources against it):

- ``root/``: the read-only skeleton mounted at ``/`` (see bundle.make_bundle);
- ``inputs/``: where the input provider serves the request's inputs;
- ``scratch/<scratch_name(p)>/``: one writable directory per scratch path ``p``;
- ``caches/<name>``: the build's private writable clone of persistent cache ``name``.

Mount order (later mounts cover earlier ones): runtime defaults, ``/tmp``, scratch paths
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
import platform
from collections.abc import Sequence
from typing import Any

from pytest_ocibuild.build.bundle import scratch_name
from pytest_ocibuild.build.ids import BUILD_GID, BUILD_UID, IdMaps
from pytest_ocibuild.build.request import BuildRequest, is_path_prefix
from pytest_ocibuild.castore.nodes import SymlinkNode
from pytest_ocibuild.errors import InvalidRequest

OCI_VERSION = "1.0.2"
SANDBOX_SHELL = "/bin/busybox"
NETWORK_FILES: tuple[str, ...] = ("/etc/resolv.conf", "/etc/services", "/etc/hosts")

# The build process holds no capabilities at all, as a Nix builder (uid 1000) holds none.
# tvix grants a rootless set (SETUID, DAC_OVERRIDE, ... also ambient); in our user namespace
# container 0 maps to the caller, so those would let a hostile build become the caller on
# every writable mount. Nothing a build legitimately does needs them.
BUILD_CAPABILITIES: tuple[str, ...] = ()

MASKED_PATHS: tuple[str, ...] = (
    "/proc/kcore", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug", "/sys/firmware",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)


def make_spec(
    request: BuildRequest,
    *,
    id_maps: IdMaps,
    rootless: bool = True,
    sandbox_shell: str | None = SANDBOX_SHELL,
    network_files: Sequence[str] = NETWORK_FILES,
) -> dict[str, Any]:
    """The runtime spec for ``request`` as a JSON-able dict (no IO).

    ``rootless`` adds a user namespace with ``id_maps`` (required when runc runs unprivileged;
    used as root too, so the build's uid 1000 is not host root). ``sandbox_shell`` is the host
    file bound at ``/bin/sh`` when ``constraints.provide_bin_sh`` (None: refuse such requests).
    ``network_files`` are bound read-only when ``constraints.network_access``; pass
    ``host_network_files()`` to leave out the ones this host lacks.
    """
    c = request.constraints
    return {
        "ociVersion": OCI_VERSION,
        "process": _process(request, rootless),
        "root": {"path": "root", "readonly": True},
        "hostname": "localhost",
        "mounts": make_mounts(
            request, rootless=rootless, sandbox_shell=sandbox_shell,
            network_files=network_files if c.network_access else (),
        ),
        "linux": _linux(network=c.network_access, rootless=rootless, id_maps=id_maps),
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


def _process(request: BuildRequest, rootless: bool) -> dict[str, Any]:
    caps = list(BUILD_CAPABILITIES)
    return {
        "terminal": False,  # stdin is /dev/null, output goes to a log file
        "user": {"uid": BUILD_UID, "gid": BUILD_GID},
        "args": list(request.command_args),
        "env": env_strings(request),
        "cwd": "/" + request.working_dir,
        "capabilities": {
            k: list(caps) for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
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
    linux["maskedPaths"] = list(MASKED_PATHS)
    linux["readonlyPaths"] = list(READONLY_PATHS)
    linux["seccomp"] = seccomp_profile()
    return linux


# Native architecture plus the compat ones a process could switch to (as Nix adds them).
_SECCOMP_ARCHES = {"x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                   "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}
_EPERM, _ENOTSUP = 1, 95


def seccomp_profile(machine: str = platform.machine()) -> dict[str, Any]:
    """Nix's build filter: no setuid/setgid bits (``chmod``/``fchmod``/``fchmodat`` with
    ``S_ISUID``/``S_ISGID`` fail with EPERM) and no extended attributes or ACLs (``*setxattr``
    fail with ENOTSUP); everything else is allowed."""
    rules: list[dict[str, Any]] = []
    for bit in (0o4000, 0o2000):
        for name, index in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2)):
            rules.append({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM,
                          "args": [{"index": index, "value": bit, "valueTwo": bit,
                                    "op": "SCMP_CMP_MASKED_EQ"}]})
    rules.append({"names": ["setxattr", "lsetxattr", "fsetxattr"], "action": "SCMP_ACT_ERRNO",
                  "errnoRet": _ENOTSUP})
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": _SECCOMP_ARCHES.get(machine, []), "syscalls": rules}


def _mount(src: str, dst: str, typ: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": dst, "type": typ, "source": src, "options": list(options)}


def default_mounts(*, rootless: bool) -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (oci-spec-rs defaults, no cgroup).

    Rootless: devpts without ``gid=5`` (gid 5 is unmapped) and /sys as a recursive read-only
    bind of the host's (a fresh sysfs needs a network namespace owned by the user namespace,
    which a build with network access does not have). ``rro`` makes the submounts read-only
    too. The /sys/fs/cgroup mount is left out: without a cgroup namespace it would expose the
    host's hierarchy.
    """
    mounts = [
        _mount("proc", "/proc", "proc", []),
        _mount("tmpfs", "/dev", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("devpts", "/dev/pts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
               + ([] if rootless else ["gid=5"])),
        _mount("shm", "/dev/shm", "tmpfs",
               ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        _mount("mqueue", "/dev/mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    ]
    if rootless:
        mounts.append(_mount("/sys", "/sys", "none", ["rbind", "nosuid", "noexec", "nodev", "rro"]))
    else:
        mounts.append(_mount("sysfs", "/sys", "sysfs", ["nosuid", "noexec", "nodev", "ro"]))
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
    mounts = default_mounts(rootless=rootless)
    # Mode 1777 rather than tvix's 700: the build user (1000) must be able to write /tmp
    # without relying on CAP_DAC_OVERRIDE.
    mounts.append(_mount("tmpfs", "/tmp", "tmpfs", ["nosuid", "nodev", "noatime", "mode=1777"]))
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
