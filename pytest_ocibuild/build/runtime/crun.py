"""CrunRuntime: crun (1.8.1 on Debian 12), run like runc (``run --detach`` under the reaper,
``--pid-file`` for the init's pid: crun keeps no ``state.json``).

Hybrid cgroup hosts. crun refuses to create a container when ``/sys/fs/cgroup`` is cgroup v1
and the cgroup2 mount at ``/sys/fs/cgroup/unified`` holds a controller ("cgroups in hybrid
mode not supported, drop all controllers from cgroupv2"; on this host ``hugetlb``, which no
v1 hierarchy has). That is the only check: crun reads that one file, and with it empty it
places the container in the v1 controllers (applying ``linux.resources``: ``pids.max``,
``memory.limit_in_bytes``) plus a real cgroup2 directory (``unified/<id>``), all of which
``crun delete`` removes. So ``crun run`` alone is run in a private mount namespace where
``/dev/null`` is bound over that file (one ``unshare``, one shell, one bind mount). Every other
command (kill, delete) sees the same cgroups as the host and needs no wrapper. Unmounting
``unified`` instead (the lead's first find) works too, but crun then writes ``unified/<id>``
into the tmpfs below it, invisible from the host and never removed.

On a pure v1 or a v2 host (or one whose cgroup2 has no controller) nothing is wrapped.

As a normal user a mount namespace needs a user namespace: ``unshare`` makes one mapping the
caller to 0 and its subordinate range (``newuidmap``) to 1.. (build.userns's layout), and crun,
root in it, writes the container's maps itself; ``_prepare`` rewrites the spec's host ids into
that namespace's (caller -> 0, subordinate id S+k -> 1+k). crun ignores cgroups it cannot
create as a normal user (v1 delegates none), as runc does: the limits are the rlimits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pytest_ocibuild.build import userns
from pytest_ocibuild.build.runtime.oci import OciRuntime
from pytest_ocibuild.errors import BundleError

UNIFIED_CONTROLLERS = Path("/sys/fs/cgroup/unified/cgroup.controllers")
V1_ROOT = Path("/sys/fs/cgroup")
# binds /dev/null over the controllers file, then execs the rest of its arguments ("$@")
_HIDE = (f"mount -o bind /dev/null {UNIFIED_CONTROLLERS} && exec \"$@\"")


class CrunRuntime(OciRuntime):
    """crun with ``--root STATE_DIR`` (``--cgroup-manager cgroupfs``: the default, named
    because a systemd manager would need a running systemd and D-Bus)."""

    name = "crun"
    install_hint = "apt-get install crun"
    # crun's messages for a command it cannot execute (not found, a directory or a
    # non-executable file, a bad interpreter): the build's failure, 127
    exec_failures = ("executable file `", "open executable:", "exec container process")

    def __init__(self, binary: str | None = None, *, state_dir: Path | None = None) -> None:
        super().__init__(binary, state_dir=state_dir)
        self._hide: list[str] | None = None  # the wrapper's argv head, once decided

    def global_args(self) -> list[str]:
        return ["--cgroup-manager", "cgroupfs"]

    def check_version(self, version: str) -> str | None:
        """crun >= 1.0 (``crun version X.Y``); on a hybrid host also what the wrapper needs."""
        found = re.match(r"crun version (\d+)\.", version)
        if found is None:
            return f"{self.binary} is not crun (its --version says {version.split(chr(10))[0]!r})"
        if int(found.group(1)) < 1:
            return f"crun {version.split()[2]} is too old: crun >= 1.0 is needed"
        hide = self._hide_argv()
        if hide and not os.path.isabs(hide[0]):
            return "crun on this hybrid cgroup host needs unshare (apt-get install util-linux)"
        if hide and os.geteuid() != 0 and not userns.usable():
            return ("crun as a normal user on this hybrid cgroup host needs a user namespace "
                    "of the caller's subordinate ids: /etc/subuid and /etc/subgid entries, "
                    "unshare, newuidmap and newgidmap (apt-get install uidmap)")
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """``crun run`` in the private mount namespace (see the module docstring)."""
        hide = self._hide_argv()
        if hide and "run" in argv:
            return [*hide, *argv]
        return argv

    def _prepare(self, bundle: Path, container_id: str) -> dict[str, Any]:
        if self._hide_argv() and os.geteuid() != 0:
            _into_namespace(bundle / "config.json")
        job = super()._prepare(bundle, container_id)
        # the init's pid inside crun's own state dir: `crun delete` removes it with the rest,
        # also after the client died (OciRuntime's <state>/<id>.pid is left behind then)
        pid_file = str(self.state_dir / container_id / "init.pid")
        job["argv"] = [pid_file if a == job["pid_file"] else a for a in job["argv"]]
        job["pid_file"] = pid_file
        # crun chowns the container's stdio to the build's uid: fd 0 must not be the host's
        # /dev/null (the build uid would own the host's); an empty pipe reads the same (EOF)
        job["stdin_pipe"] = True
        # where crun puts the container (cgroupsPath unset: /<id> in each v1 controller), for
        # the reaper to read pids.events / memory.oom_control after a failure
        job["cgroup_paths"] = {c: str(V1_ROOT / c / container_id) for c in ("memory", "pids")} \
            if (V1_ROOT / "pids").is_dir() else {"": str(V1_ROOT / container_id)}
        return job

    def list(self) -> list[str]:
        """Ids of the containers in the state dir: subdirectories holding crun's ``status``."""
        try:
            with os.scandir(self.state_dir) as it:
                names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            return super().list()  # its error message
        return sorted(n for n in names if os.path.exists(self.state_dir / n / "status"))

    def _hide_argv(self) -> list[str]:
        """[] unless this host's cgroup2 mount lists controllers; then ``unshare --mount
        --propagation slave SH -c HIDE sh`` (busybox's shell when there is one: it starts
        faster than dash and has ``mount`` built in)."""
        if self._hide is None:
            try:
                busy = UNIFIED_CONTROLLERS.read_text().strip() != ""
            except OSError:
                busy = False
            if not busy:
                self._hide = []
            else:
                unshare = shutil.which("unshare") or "unshare"
                busybox = shutil.which("busybox")
                shell = [busybox, "sh"] if busybox else ["/bin/sh"]
                user = []
                if os.geteuid() != 0 and (found := userns.maps()) is not None:
                    (us, un), (gs, gn) = found
                    user = ["--map-root-user", f"--map-users={us},1,{un}",
                            f"--map-groups={gs},1,{gn}"]
                # slave: mounts made on the host later still reach us (none are made here)
                self._hide = [unshare, *user, "--mount", "--propagation", "slave", *shell,
                              "-c", _HIDE, "crun-run"]
        return self._hide


def _into_namespace(config: Path) -> None:
    """Rewrite the spec's uid/gid maps from host ids to those of the wrapper's namespace."""
    spec = json.loads(config.read_bytes())
    found = userns.maps()
    linux = spec.get("linux") or {}
    for which, key in enumerate(("uidMappings", "gidMappings")):
        mine = (os.geteuid(), os.getegid())[which]
        start, count = found[which] if found else (0, 0)
        for m in linux.get(key) or ():
            host, size = m["hostID"], m.get("size", 1)
            if host == mine and size == 1:
                m["hostID"] = 0
            elif start <= host and host + size <= start + count:
                m["hostID"] = 1 + host - start
            else:
                raise BundleError(f"{config}: {key} host id {host} is neither the caller's "
                                  "nor in its subordinate range")
    tmp = config.with_name(config.name + ".crun")
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, config)
