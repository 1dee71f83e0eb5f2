"""RunscRuntime: gVisor's runsc (release 20221219 on Debian 12), the build's system calls
served by gVisor's own kernel (the Sentry) rather than the host's.

``runsc run --detach`` returns once the container has started but leaves the sandbox alive
after the build exits (it waits for a ``runsc delete``), so runsc runs in the foreground
(``detach = False``: the reaper's ``"foreground"`` job, runsc's own exit status is the build's,
as ``runc run`` reports it, 128+N for signal N). Its sandbox and gofer are started
``--attached`` (runsc's own choice in the foreground): they die with it, so killing runsc kills
the build; ``runsc kill ID KILL`` and ``runsc delete --force ID`` are runc's commands.

Flags, each for a reason:

- ``--network=none``: the spec's network namespace holds only loopback, as under runc
  (runsc's default ``sandbox`` would give the build gVisor's netstack over the host's
  interfaces inside that namespace, i.e. none, but still set up a stack for each).
- ``--oci-seccomp``: without it runsc ignores ``linux.seccomp`` (gVisor's own filter guards the
  host, not the build), so e.g. setuid ``chmod`` would be allowed.
- ``--overlay2=none``: the root and the bind mounts are the bundle's directories themselves,
  so what the build writes reaches them (outputs, and the disk budget that counts the root and
  its ``/tmp``) as under runc. This release's default is no overlay too; named so that a newer
  runsc (default ``root:memory``: writes kept in the sandbox's memory) behaves the same.
- ``--ignore-cgroups``: the spec names no ``cgroupsPath``, so runsc would make no cgroup
  anyway; the limits runsc cannot apply are the pids and memory ones (memory is still the
  Sentry's total memory, ``--total-memory``, which it takes from ``linux.resources``).

``/tmp``: runsc mounts a tmpfs of its own (in the Sentry's memory) at an empty ``/tmp`` that the
spec does not mount, so the build's ``/tmp`` would not be the root's: the disk budget, which
counts the root's ``tmp``, would miss it. ``_prepare`` binds the root's ``tmp`` there.
A build with ``network_access`` (no network namespace in the spec) is refused: runsc
``--network=host`` fails for it here (the gofer's "error converting mounts").

Capabilities: this runsc does not know ``CAP_PERFMON``, ``CAP_BPF`` and
``CAP_CHECKPOINT_RESTORE`` (Linux 5.8/5.9) and fails "converting capabilities: unknown
capability" for a spec naming them; ``_prepare`` removes them from the bundle's
``config.json`` (there is no flag for it; gVisor implements none of the three).
runsc also makes ``/sys`` in the root (a mount point for its own sysfs).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.runtime.oci import OciRuntime
from pytest_ocibuild.errors import BundleError

UNKNOWN_CAPS = frozenset({"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})
_STATE = re.compile(r"^(?P<sandbox>[^_]+)_sandbox:(?P<cid>.+)\.state$")


class RunscRuntime(OciRuntime):
    """runsc with ``--root STATE_DIR`` and the flags above."""

    name = "runsc"
    install_hint = "apt-get install runsc"
    detach = False
    # runsc's message for a build command it cannot load (missing, a directory, not
    # executable): the build's failure, 127
    exec_failures = ("creating process: failed to load",)

    def global_args(self) -> list[str]:
        return ["--network=none", "--oci-seccomp", "--overlay2=none", "--ignore-cgroups"]

    def check_version(self, version: str) -> str | None:
        """``runsc version ...``. A normal user needs no flag: for a spec with a user namespace
        whose maps name subordinate ids, runsc maps them itself (``newuidmap``) and runs the
        sandbox as nobody in a user namespace mapped to the caller (its log: "Rootless mode");
        the gofer still chroots. ``--rootless`` (it fails here: "cannot create gofer process:
        gofer: fork/exec /proc/self/exe: operation not permitted") and
        ``--TESTONLY-unsafe-nonroot`` (it "skips many security measures") are not used."""
        if not version.startswith("runsc version"):
            return f"{self.binary} is not runsc (its --version says {version.split(chr(10))[0]!r})"
        return None

    def _prepare(self, bundle: Path, container_id: str) -> dict[str, Any]:
        if _adapt(bundle / "config.json"):
            raise BundleError(
                "runsc cannot run a build with network_access here: with --network=host (the "
                "spec shares the host's network namespace) its gofer fails \"error setting up "
                "chroot: error converting mounts: operation not permitted\"; use runc or crun")
        job = super()._prepare(bundle, container_id)
        job["stdin_pipe"] = True  # else runsc chowns the host's /dev/null (fd 0) to nobody
        return job

    def list(self) -> list[str]:
        """Ids of the containers in the state dir (runsc keeps ``<sandbox>_sandbox:<id>.state``
        files there)."""
        try:
            names = os.listdir(self.state_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            return super().list()  # its error message
        return sorted(m.group("cid") for n in names if (m := _STATE.match(n)))


def _adapt(config: Path) -> bool:
    """Rewrite the bundle's ``config`` for runsc (see the module docstring): without the
    capabilities it does not know, and with ``/tmp`` bound to the root's own. True if the spec
    has no network namespace of its own (the build shares the host's)."""
    try:
        spec = json.loads(config.read_bytes())
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {config}: {e}") from None
    changed = _drop_unknown_caps(spec)
    mounts = spec.setdefault("mounts", [])
    root = config.parent / (spec.get("root") or {}).get("path", "rootfs")
    tmp = root / "tmp"
    if tmp.is_dir() and not tmp.is_symlink() \
            and all(m.get("destination") != "/tmp" for m in mounts):
        mounts.append({"destination": "/tmp", "type": "bind", "source": str(tmp),
                       "options": ["rbind", "rw"]})
        changed = True
    if changed:
        temp = config.with_name(config.name + ".runsc")
        temp.write_text(json.dumps(spec))
        os.replace(temp, config)
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return all(n.get("type") != "network" for n in namespaces)


def _drop_unknown_caps(spec: dict[str, Any]) -> bool:
    """Remove the capabilities this runsc does not know from ``spec``; True if it had any."""
    caps = (spec.get("process") or {}).get("capabilities") or {}
    if not any(UNKNOWN_CAPS.intersection(v or ()) for v in caps.values()):
        return False
    for key, names in caps.items():
        caps[key] = [c for c in names or () if c not in UNKNOWN_CAPS]
    return True
