"""An OCI bundle's ``config.json`` as a bubblewrap command line (pure: no IO).

bwrap is not an OCI runtime; snix builds with it the same way. The translation:

- namespaces: ``--unshare-all`` (user, ipc, pid, net, uts, cgroup) and ``--unshare-user``
  always; ``--share-net`` only when the spec has no network namespace (the request's
  ``constraints.network_access``, where runc shares the host's network too);
- ``process``: ``--uid``/``--gid``, ``--clearenv`` + ``--setenv``, ``--chdir``; no
  capabilities (``--cap-drop ALL``), no_new_privs (bwrap always sets it); ``--as-pid-1`` (the
  command is the namespace's init, as under runc), ``--die-with-parent``, ``--new-session``;
- ``hostname``: ``--hostname``; ``root``: bound at ``/`` (or read-only but for ``/tmp``, when
  the build user owns it);
- ``mounts`` in order: bind (``ro``: ``--ro-bind``; bwrap binds are recursive, nosuid and
  nodev), tmpfs (``--perms``/``--size`` from ``mode=``/``size=``), proc (``--proc``), the
  ``/dev`` bind (``--dev``: a tmpfs with null, zero, full, random, urandom, tty, devpts at
  /dev/pts and the std symlinks, so those device binds and the devpts mount are covered;
  other device binds are ``--dev-bind``), mqueue; ``ro`` tmpfs and ``/dev`` are remounted
  read-only last (``--remount-ro`` is not recursive, so mounts inside stay as they are);
- ``process.rlimits`` (and ``linux.resources.pids`` when no ``RLIMIT_NPROC``): bwrap sets
  none, so the command is run under util-linux ``prlimit``, which sets them and execs;
- ``linux.seccomp``: loaded by bwrap from a file descriptor (compiled by ``seccomp_bpf``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from pytest_ocibuild.errors import BundleError

# What ``bwrap --dev`` itself provides.
DEV_NODES = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                       "/dev/tty"})
_PRLIMIT = {"RLIMIT_AS": "as", "RLIMIT_CORE": "core", "RLIMIT_CPU": "cpu",
            "RLIMIT_DATA": "data", "RLIMIT_FSIZE": "fsize", "RLIMIT_LOCKS": "locks",
            "RLIMIT_MEMLOCK": "memlock", "RLIMIT_MSGQUEUE": "msgqueue", "RLIMIT_NICE": "nice",
            "RLIMIT_NOFILE": "nofile", "RLIMIT_NPROC": "nproc", "RLIMIT_RSS": "rss",
            "RLIMIT_RTPRIO": "rtprio", "RLIMIT_RTTIME": "rttime",
            "RLIMIT_SIGPENDING": "sigpending", "RLIMIT_STACK": "stack"}
_BIND_TYPES = ("bind", "none", "rbind")
_SIZE = re.compile(r"^(\d+)([kmg%]?)$", re.IGNORECASE)


def host_id(config: dict[str, Any], key: str, container_id: int) -> int | None:
    """The host id ``container_id`` maps to in ``linux.<key>`` (None: no map covers it)."""
    for m in config.get("linux", {}).get(key) or ():
        if m["containerID"] <= container_id < m["containerID"] + m["size"]:
            return int(m["hostID"]) + container_id - int(m["containerID"])
    return None


def bwrap_args(config: dict[str, Any], bundle: str, *, status_fd: int | None = 3,
               seccomp_fd: int | None = None,
               writable_in_root: Sequence[str] | None = None) -> list[str]:
    """bwrap's options for ``config`` (paths relative to ``bundle``), then ``--`` and the
    command. ``status_fd``: ``--json-status-fd``; ``seccomp_fd``: where the compiled
    ``linux.seccomp`` can be read (required when the spec has one). ``writable_in_root``:
    bind the root read-only, and only these directories of it writable (for a root the
    build user owns: a normal user's bwrap build without subordinate ids runs as the caller,
    who owns ``root/``)."""
    process = config.get("process") or {}
    linux = config.get("linux") or {}
    kinds = {n.get("type") for n in linux.get("namespaces") or ()}
    user = process.get("user") or {}
    args = ["--unshare-all", "--unshare-user"]
    if "network" not in kinds:
        args.append("--share-net")
    args += ["--uid", str(int(user.get("uid", 0))), "--gid", str(int(user.get("gid", 0))),
             "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    caps = process.get("capabilities") or {}
    if any(caps.get(k) for k in ("effective", "permitted", "ambient")):
        raise BundleError("bwrap runs builds without capabilities; the spec grants some")
    if config.get("hostname"):
        args += ["--hostname", str(config["hostname"])]
    args.append("--clearenv")
    for entry in process.get("env") or ():
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise BundleError(f"process.env: {entry!r} is not KEY=VALUE")
        args += ["--setenv", key, value]
    root = config.get("root") or {}
    root_dir = _source(bundle, root.get("path", "rootfs"))
    protect = writable_in_root is not None and not root.get("readonly")
    args += ["--ro-bind" if root.get("readonly") or protect else "--bind", root_dir, "/"]
    for d in writable_in_root or () if protect else ():
        args += ["--bind", f"{root_dir}/{d.strip('/')}", "/" + d.strip("/")]
    args += mount_args(config.get("mounts") or (), bundle)
    if process.get("cwd"):
        args += ["--chdir", process["cwd"]]
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    if linux.get("seccomp"):
        if seccomp_fd is None:
            raise BundleError("linux.seccomp: no compiled filter to give bwrap")
        args += ["--seccomp", str(seccomp_fd)]
    command = process.get("args") or []
    if not command:
        raise BundleError("process.args is empty")
    return [*args, "--", *command]


def mount_args(mounts: Sequence[dict[str, Any]], bundle: str) -> list[str]:
    """The mounts, in order, as bwrap options (see the module docstring)."""
    args: list[str] = []
    read_only: list[str] = []  # remounted read-only after every mount is made
    dev = False  # --dev /dev was given
    for m in mounts:
        dest = m.get("destination", "")
        kind = m.get("type") or "none"
        options = list(m.get("options") or ())
        if not dest.startswith("/"):
            raise BundleError(f"mount destination {dest!r} is not absolute")
        ro = "ro" in options
        if kind == "proc":
            args += ["--proc", dest]
        elif kind in _BIND_TYPES and dest == "/dev":
            dev = True
            args += ["--dev", "/dev"]
            if ro:
                read_only.append("/dev")
        elif kind == "devpts" and dev and dest == "/dev/pts":
            continue  # --dev mounted a new devpts instance there (ptmxmode=0666,mode=620)
        elif kind in _BIND_TYPES and dev and dest in DEV_NODES \
                and m.get("source") == dest:
            continue  # --dev bound the host's node there
        elif kind in _BIND_TYPES and _under(dest, "/dev") and "nodev" not in options:
            args += ["--dev-bind", _source(bundle, m.get("source", "")), dest]
            if ro:
                read_only.append(dest)
        elif kind in _BIND_TYPES:
            args += ["--ro-bind" if ro else "--bind", _source(bundle, m.get("source", "")),
                     dest]
        elif kind == "tmpfs":
            for option in options:
                name, _, value = option.partition("=")
                if name == "mode":
                    args += ["--perms", value.zfill(4)]
                elif name == "size":
                    args += ["--size", str(tmpfs_size(value))]
            args += ["--tmpfs", dest]
            if ro:
                read_only.append(dest)
        elif kind == "mqueue":
            args += ["--mqueue", dest]
        else:
            raise BundleError(f"bwrap cannot mount {kind!r} at {dest}")
    for dest in read_only:
        args += ["--remount-ro", dest]
    return args


def prlimit_args(config: dict[str, Any], *, pids: bool = True) -> list[str]:
    """util-linux ``prlimit`` options for ``process.rlimits`` (and, if ``pids``,
    ``linux.resources.pids`` as ``--nproc`` when no ``RLIMIT_NPROC`` is given: when no pids
    cgroup enforces it); [] for none."""
    opts: dict[str, str] = {}
    for r in (config.get("process") or {}).get("rlimits") or ():
        name = _PRLIMIT.get(r.get("type", ""))
        if name is None:
            raise BundleError(f"process.rlimits: unknown limit {r.get('type')!r}")
        opts[name] = f"{int(r['soft'])}:{int(r['hard'])}"
    if pids:
        limit = (((config.get("linux") or {}).get("resources") or {}).get("pids") or {}) \
            .get("limit")
        if limit and limit > 0 and "nproc" not in opts:
            opts["nproc"] = f"{int(limit)}:{int(limit)}"
    return [f"--{k}={v}" for k, v in sorted(opts.items())]


def tmpfs_size(value: str) -> int:
    """A tmpfs ``size=`` option (``65536k``, ``64m``, bytes) in bytes; ``%`` is refused."""
    match = _SIZE.match(value)
    if not match or match.group(2) == "%":
        raise BundleError(f"tmpfs size {value!r}: bwrap takes a size in bytes, k, m or g")
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(match.group(1)) * unit


def _source(bundle: str, source: str) -> str:
    if not source:
        raise BundleError("a bind mount has no source")
    return source if source.startswith("/") else f"{bundle.rstrip('/')}/{source}"


def _under(path: str, parent: str) -> bool:
    return PurePosixPath(parent) in PurePosixPath(path).parents
