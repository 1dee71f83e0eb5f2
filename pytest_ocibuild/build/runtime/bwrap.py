"""BwrapRuntime: the bundle run by bubblewrap (not an OCI runtime; see bwrap_args).

The reaper (docs/reaper.md) runs, in the foreground (bwrap's own exit status is the build's):

    [prlimit --nofile=.. --fsize=.. [--nproc=..] --] [setpriv --reuid H ... --] bwrap ARGS

- ``prlimit`` (util-linux) sets ``process.rlimits``, which bwrap has no option for;
- as root, ``setpriv`` makes bwrap unprivileged as the host id the spec maps the build user
  to (one per build slot), with container root's host group as its only supplementary group
  (the bundle directory is 0710 to that group, see bundle.owners), so bwrap makes its own
  user namespace, the build runs as uid 1000 there and what it writes belongs to that host
  id; as a normal user, bwrap runs as the build user's subordinate id in a user namespace of
  the caller's with the spec's mappings (``nsenter``, bwrap_userns), where the same happens;
- as root, the sandbox is put in a cgroup v1 ``memory`` and ``pids`` cgroup of its own (by
  a ``sh`` wrapper writing its pid, then exec), read for limits reached and removed after.

bwrap's fd 3 is the reaper's memory file, written by ``--json-status-fd 3``: bwrap writes
``{"exit-code": N}`` there only when the command was executed, so a run without it failed in
bwrap's setup (or exec), whose ``bwrap: ...`` line is the last one of the log. The seccomp
filter is compiled once (seccomp_bpf) and opened by the reaper at fd 4 (``--seccomp 4``).
On timeout the reaper SIGKILLs bwrap; ``--die-with-parent`` kills the command, the pid
namespace's init, and with it every process of the sandbox.

Limits of the approach: bwrap (unlike runc) passes inherited fds on to the build, so the
reaper's control socket, which its children inherit, is replaced by /dev/null in the job
(``files``). As root, bwrap mounts as the build's host uid: sources it cannot reach (below a
0700 ``$XDG_RUNTIME_DIR`` or pytest temp dir) are bound for it in a mount namespace of the
build's own (bwrap_alias); as a normal user, in a mount namespace of that user namespace. A
normal user without a subordinate id range gets ``caller_id_maps()`` (``id_maps``): bwrap maps
the caller itself to the build user, so builds share the caller's uid (and ``RLIMIT_NPROC``
counts all of its processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.ids import IdMaps, caller_id_maps
from pytest_ocibuild.build.reaper_client import Job, ReaperGone
from pytest_ocibuild.build.runtime.base import ExitStatus, OnOutput
from pytest_ocibuild.build.runtime.bwrap_alias import (
    ALIAS,
    ALIAS_SH,
    aliased,
    ensure_alias_dir,
    user_alias_dir,
)
from pytest_ocibuild.build.runtime.bwrap_args import bwrap_args, host_id, prlimit_args
from pytest_ocibuild.build.runtime.bwrap_userns import UserNamespaces
from pytest_ocibuild.build.runtime.oci import USERNS_LIMIT, _read_int, _with_doctor
from pytest_ocibuild.build.runtime.reaped import KILL_GRACE, ReapedRuntime
from pytest_ocibuild.build.runtime.seccomp_bpf import bpf_file
from pytest_ocibuild.errors import BundleError, RuntimeUnavailable

SECCOMP_FD = 4
CGROUP_V1 = Path("/sys/fs/cgroup")
LOG_TAIL = 8192  # bytes of the build log searched for bwrap's own error
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
# bwrap's (and setpriv's) messages meaning "cannot make sandboxes here"
_UNAVAILABLE = ("no permission to create", "user namespace", "uid map", "gid map",
                "creating new namespace failed", "operation not permitted", "setpriv:",
                "prlimit:", "unshare:")
# put this shell in the cgroups given as arguments, then exec the rest
_ENTER = 'for g in "$@"; do [ "$g" = -- ] && break; echo $$ > "$g/cgroup.procs" || exit 125; ' \
         'shift; done; shift; exec "$@"'


class BwrapRuntime(ReapedRuntime):
    """bubblewrap (0.8 on Debian 12)."""

    name = "bwrap"
    # cgroup v1 controllers a root build's sandbox is put in (without "pids", the pids limit
    # is RLIMIT_NPROC of the build's host uid, one per build slot, and a refused fork is not
    # reported as too-many-processes)
    cgroup_controllers: tuple[str, ...] = ("memory", "pids")

    def id_maps(self) -> IdMaps | None:
        """None (the executor's: a host or subordinate id per build slot), but for a normal
        user without a subordinate id range: the caller's own ids (``caller_id_maps``)."""
        if os.geteuid() == 0:
            return None
        try:
            IdMaps.detect()
        except RuntimeUnavailable:
            return caller_id_maps()
        return None

    def __init__(self, binary: str = "bwrap") -> None:
        super().__init__()
        self.binary = binary
        self._tools: dict[str, str] | None = None  # bwrap, prlimit, setpriv, sh: paths
        self._cgroups: dict[str, list[Path]] = {}  # container id -> its cgroups
        self._logs = threading.local()  # .log, .cid, .hit: the running build's
        self._userns = UserNamespaces()  # a normal user's, by id mapping

    def __repr__(self) -> str:
        return f"BwrapRuntime({self.binary!r})"

    def unavailable_reason(self) -> str | None:
        """None if bwrap runs sandboxes here (checked once, by running one); else why not."""
        if self._tools is not None:
            return None
        tools = {}
        for tool, package in ((self.binary, "bubblewrap"), ("prlimit", "util-linux"),
                              ("setpriv", "util-linux"), ("unshare", "util-linux"),
                              ("nsenter", "util-linux"),
                              ("sh", "dash")):
            path = shutil.which(tool, path=os.environ.get("PATH", "") + ":" + _ENV["PATH"])
            if path is None:
                return _with_doctor(f"{tool!r} not found on PATH (install it: apt-get install "
                                    f"{package})")
            tools[tool] = path
        tools["bwrap"] = tools.pop(self.binary)
        if _read_int(USERNS_LIMIT) == 0:
            return _with_doctor(f"user namespaces are disabled ({USERNS_LIMIT} is 0)")
        probe = [tools["bwrap"], "--unshare-all", "--unshare-user", "--die-with-parent",
                 "--ro-bind", "/", "/", "--", "true"]
        if os.geteuid() == 0:  # as builds run: unprivileged
            probe = [tools["setpriv"], "--reuid", "65534", "--regid", "65534",
                     "--clear-groups", "--", *probe]
        try:
            version = subprocess.run([tools["bwrap"], "--version"], capture_output=True,
                                     timeout=30, stdin=subprocess.DEVNULL)
            if version.returncode != 0:
                return f"{tools['bwrap']} --version failed: {_last_line(version.stderr)}"
            out = subprocess.run(probe, capture_output=True, timeout=30,
                                 stdin=subprocess.DEVNULL, env=_ENV)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bwrap {tools['bwrap']} does not run: {e}"
        if out.returncode != 0:
            return _with_doctor(f"bwrap cannot create a sandbox: {_last_line(out.stderr)}")
        self._start_reaper()
        self._tools = tools
        return None

    def run(self, bundle: Path, container_id: str, *, log: Path, timeout: float | None,
            max_silent: float | None = None, on_output: OnOutput | None = None) -> ExitStatus:
        """ReapedRuntime.run, remembering ``log`` (bwrap's own errors land there) and reading
        the sandbox's cgroups for limits reached."""
        self._logs.log, self._logs.hit, self._logs.cid = log, [], container_id
        try:
            status = super().run(bundle, container_id, log=log, timeout=timeout,
                                 max_silent=max_silent, on_output=on_output)
        finally:
            hit, self._logs.log, self._logs.hit = self._logs.hit, None, []
        if status.limit is None and hit:
            status = replace(status, limit="out-of-memory" if "memory" in hit
                             else "too-many-processes")
        return status

    def _prepare(self, bundle: Path, container_id: str) -> dict[str, Any]:
        tools = self._tools or {}
        try:
            with open(bundle / "config.json", "rb") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {bundle / 'config.json'}: {e}") from None
        files = {}
        seccomp = (config.get("linux") or {}).get("seccomp")
        if seccomp:
            from pytest_ocibuild.build.locations import runtime_state_dir

            files[str(SECCOMP_FD)] = str(bpf_file(seccomp, runtime_state_dir(self.name)))
        config = _with_home(config, bundle)
        as_root = os.geteuid() == 0
        uid, gid = self._build_ids(config) if as_root else self._user_build_ids(config)
        in_userns = not as_root and uid != os.geteuid()  # a subordinate id (bwrap_userns)
        alias: list[str] = []  # directories bwrap's user cannot reach (bwrap_alias)
        at = ALIAS if as_root else user_alias_dir()
        if as_root or in_userns:
            config, alias = aliased(config, bundle, uid, gid, *_extra_group(config, gid), at=at)
            if alias:
                ensure_alias_dir(at)
        argv = [tools.get("bwrap", self.binary),
                *bwrap_args(config, str(bundle), status_fd=3,
                            seccomp_fd=SECCOMP_FD if seccomp else None,
                            writable_in_root=None if as_root or in_userns else ("/tmp",))]
        groups: list[Path] = []
        if as_root or in_userns:
            argv = [*self._identity(config, tools, in_userns=in_userns), *argv]
            if alias:  # a mount namespace of its own, those directories bound in it
                argv = [tools.get("unshare", "unshare"), "--mount", "--",
                        tools.get("sh", "/bin/sh"), "-c", ALIAS_SH, "sh", str(at), *alias,
                        "--", *argv]
        if in_userns:  # as root of the caller's user namespace with the spec's mappings
            argv = [tools.get("nsenter", "nsenter"), f"--user={self._userns.path(config)}",
                    "--", *argv]
        if as_root:
            groups = self._make_cgroups(config, container_id)
            if groups:
                argv = [tools.get("sh", "/bin/sh"), "-c", _ENTER, "sh",
                        *map(str, groups), "--", *argv]
        try:
            limits = prlimit_args(config, pids=not any(g.parent.parent.name == "pids"
                                                       for g in groups))
        except BundleError:
            self._done(container_id)  # run() calls _done only once _prepare returned
            raise
        if limits:
            argv = [tools.get("prlimit", "prlimit"), *limits, "--", *argv]
        return {"argv": argv, "env": dict(_ENV), "state": str(bundle), "pid_file": None,
                "foreground": True, "delete": None, "bundle": str(bundle), "files": files}

    def _build_ids(self, config: dict[str, Any]) -> tuple[int, int]:
        """The host uid and gid of the build user; BundleError if root or unmapped."""
        user = (config.get("process") or {}).get("user") or {}
        uid = host_id(config, "uidMappings", int(user.get("uid", 0)))
        gid = host_id(config, "gidMappings", int(user.get("gid", 0)))
        if not uid or not gid:
            raise BundleError("bwrap: the spec maps the build user to no host id other than "
                              "root (linux.uidMappings / gidMappings)")
        return uid, gid

    def _user_build_ids(self, config: dict[str, Any]) -> tuple[int, int]:
        """A normal user's build user's host ids: the caller's when unmapped (bwrap maps
        the caller itself), else the spec's (a subordinate id)."""
        user = (config.get("process") or {}).get("user") or {}
        uid = host_id(config, "uidMappings", int(user.get("uid", 0)))
        gid = host_id(config, "gidMappings", int(user.get("gid", 0)))
        if uid is None or uid == os.geteuid():
            return os.geteuid(), os.getegid()
        if gid is None:
            raise BundleError("bwrap: the spec maps the build user's group to no host id "
                              "(linux.gidMappings)")
        return uid, gid

    def _identity(self, config: dict[str, Any], tools: dict[str, str], *,
                  in_userns: bool = False) -> list[str]:
        """``setpriv`` to the build user: as root, its host ids (bwrap then runs
        unprivileged); ``in_userns``, its ids in the spec's user namespace."""
        if in_userns:
            user = (config.get("process") or {}).get("user") or {}
            uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
            extra = [0] if _extra_group(config, host_id(config, "gidMappings", gid) or 0) \
                else []
        else:
            uid, gid = self._build_ids(config)
            extra = _extra_group(config, gid)
        groups = ["--groups", str(extra[0])] if extra else ["--clear-groups"]
        return [tools.get("setpriv", "setpriv"), "--reuid", str(uid), "--regid", str(gid),
                *groups, "--inh-caps=-all", "--"]

    def _make_cgroups(self, config: dict[str, Any], container_id: str) -> list[Path]:
        """The sandbox's cgroup v1 ``memory`` and ``pids`` directories with the spec's
        limits ([] when the spec sets none or this host has no such hierarchy)."""
        resources = (config.get("linux") or {}).get("resources") or {}
        memory = (resources.get("memory") or {}).get("limit")
        pids = (resources.get("pids") or {}).get("limit")
        settings = {"memory": {"memory.limit_in_bytes": memory,
                               "memory.memsw.limit_in_bytes": (resources.get("memory") or {})
                               .get("swap")},
                    "pids": {"pids.max": pids}}
        made: list[Path] = []
        try:
            for controller, files in settings.items():
                if controller not in self.cgroup_controllers or not any(files.values()) \
                        or not (CGROUP_V1 / controller / "tasks").exists():
                    continue
                group = CGROUP_V1 / controller / "ocibuild" / container_id
                group.mkdir(parents=True, exist_ok=True)  # one a crash left: reused
                made.append(group)
                for name, value in files.items():
                    if value and (group / name).exists():
                        (group / name).write_text(str(value))
        except OSError as e:
            self._remove_cgroups(made)
            raise RuntimeUnavailable(f"bwrap: cannot set up cgroup {e.filename}: "
                                     f"{e.strerror}") from None
        if made:
            self._cgroups[container_id] = made
        return made

    def _stop(self, job: Job, container_id: str) -> int:
        """SIGKILL bwrap (through the reaper): its ``--die-with-parent`` kills the
        sandbox's init, and the pid namespace goes with it."""
        try:
            job.kill()
            return job.wait_exit(KILL_GRACE)[0]
        except (TimeoutError, ReaperGone):
            job.close()
            return 128 + signal.SIGKILL

    def _check_error(self, runtime_log: str, code: int) -> int:
        """``code`` when bwrap executed the command (``exit-code`` in its status); otherwise
        bwrap's own failure: 127 for the command (``execvp``), else an exception."""
        self._logs.hit = self.limits_reached(getattr(self._logs, "cid", ""))
        if '"exit-code"' in runtime_log:
            return code
        msg = _tool_error(getattr(self._logs, "log", None))
        if msg is None:
            return code
        if msg.startswith("bwrap: execvp "):
            return 127
        if any(m in msg.lower() for m in _UNAVAILABLE):
            raise RuntimeUnavailable(_with_doctor(f"bwrap cannot create the sandbox: {msg}"))
        raise BundleError(f"bwrap rejected the bundle: {msg}")

    def _done(self, container_id: str) -> None:
        self._remove_cgroups(self._cgroups.pop(container_id, []))

    def limits_reached(self, container_id: str) -> list[str]:
        """``memory`` / ``pids`` if the sandbox's cgroups saw an OOM kill / a refused fork."""
        from pytest_ocibuild.build import reaper_cgroups

        paths = {g.parent.parent.name: str(g) for g in self._cgroups.get(container_id, [])}
        return reaper_cgroups.limits_reached({"cgroup_paths": paths})

    def _remove_cgroups(self, groups: list[Path]) -> None:
        from pytest_ocibuild.build import reaper_cgroups

        for group in groups:
            with contextlib.suppress(OSError, ValueError):
                # what a bwrap killed mid-setup leaves (its child waits for it forever)
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
                reaper_cgroups._remove_cgroup(str(group))


def _extra_group(config: dict[str, Any], gid: int) -> list[int]:
    """Container root's host group, bwrap's one supplementary group as root (the bundle
    directory is 0710 to it), unless it is root's or the build's own."""
    root_gid = host_id(config, "gidMappings", 0)
    return [] if root_gid in (None, 0, gid) else [root_gid]  # type: ignore[list-item]


def _with_home(config: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """``config`` with ``HOME`` in ``process.env`` when it has none, as runc sets it: the
    build user's home in the root's ``/etc/passwd``, else ``/``."""
    process = config.get("process") or {}
    env = list(process.get("env") or ())
    if any(e.startswith("HOME=") for e in env):
        return config
    uid = str((process.get("user") or {}).get("uid", 0))
    root = (config.get("root") or {}).get("path", "rootfs")
    home = "/"
    try:
        with open(Path(bundle, root, "etc", "passwd"), encoding="utf-8",
                  errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == uid and fields[5]:
                    home = fields[5]
                    break
    except OSError:
        pass
    return {**config, "process": {**process, "env": [*env, f"HOME={home}"]}}




def _tool_error(log: Path | None) -> str | None:
    """The last line of ``log`` that bwrap or a tool before it wrote about itself."""
    if log is None:
        return None
    try:
        with open(log, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - LOG_TAIL))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        if line.startswith(("bwrap: ", "setpriv: ", "prlimit: ", "unshare: ", "mount: ")):
            return " ".join(line.split())
    return None


def _last_line(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text.splitlines()[-1] if text else "(no output)"
