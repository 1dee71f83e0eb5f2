"""``ocibuild doctor``: can this machine, for this user, run sandboxed builds?

Each check is a function returning a ``Check`` ``(name, ok, detail, fix)``: ``fix`` is the
command that repairs a failure ("" when none is needed). ``CHECKS`` pairs each with whether it
is required (builds cannot run without it) or optional (one feature: another runtime, FUSE
inputs, Nix, cgroup limits). ``run`` prints one line per check; the exit code is 0 when every
required check passes, else 1. Only light modules are imported (stdlib, ``ids``,
``locations``): the checks must run where the rest would fail. The only thing changed is the
per-user directory (``locations.user_dir``), created if missing as a first build would.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from pytest_ocibuild.build.ids import SUBGID_PATH, SUBUID_PATH, subordinate_range
from pytest_ocibuild.build.locations import default_store_dir, user_dir
from pytest_ocibuild.errors import RuntimeUnavailable

MIN_FREE = 1 << 30  # bytes free on the store's file system below which builds may fail
FUSE_CONF = Path("/etc/fuse.conf")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUBID_START = 100000  # where a suggested subordinate range starts at the least
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # searched when a binary is not on PATH
RUNTIME_PACKAGES = {"runc": "runc", "crun": "crun", "runsc": "runsc", "bwrap": "bubblewrap"}


class Check(NamedTuple):
    """One check's outcome; ``fix``: the command to run when ``ok`` is False."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _root() -> bool:
    return os.geteuid() == 0


def _sudo(command: str) -> str:
    return command if _root() else f"sudo {command}"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _first_line(argv: Sequence[str]) -> tuple[bool, str]:
    """``(exited 0, first line of its stdout or stderr)`` of a short command."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    lines = (p.stdout.strip() or p.stderr.strip()).splitlines()
    return p.returncode == 0, lines[0] if lines else f"exit code {p.returncode}"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_runtime(binary: str) -> Check:
    """A sandbox runtime on PATH, with its version."""
    path = shutil.which(binary)
    install = _sudo(f"apt-get install {RUNTIME_PACKAGES.get(binary, binary)}")
    if path is None:
        elsewhere = shutil.which(binary, path=os.pathsep.join(SBIN))
        if elsewhere is not None:  # Debian's runc is in /usr/sbin, not on a user's PATH
            where = os.path.dirname(elsewhere)
            return Check(binary, False, f"not on PATH (it is in {where})",
                         f'export PATH="$PATH:{where}"')
        return Check(binary, False, "not found on PATH", install)
    ok, line = _first_line([path, "--version"])
    if not ok:
        return Check(binary, False, f"{path} --version failed: {line}", install)
    return Check(binary, True, f"{line} ({path})")


def check_backend(name: str) -> Check:
    """What the backend itself says about running builds here (build.runtime)."""
    from pytest_ocibuild.build.runtime import open_runtime

    reason = open_runtime(name).unavailable_reason()
    if reason:  # the reason names its fix
        return Check(f"{name} builds", False, reason.split("; ocibuild doctor:")[0])
    return Check(f"{name} builds", True, "can run builds here")


def check_user_namespaces() -> Check:
    """User namespaces may be created (by this user, when not root)."""
    name = "user namespaces"
    limit = _read("/proc/sys/user/max_user_namespaces")
    if limit is not None and limit.isdigit() and int(limit) == 0:
        return Check(name, False, "user.max_user_namespaces is 0",
                     _sudo("sysctl -w user.max_user_namespaces=15000"))
    if not _root():
        if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
            return Check(name, False, "kernel.unprivileged_userns_clone is 0",
                         _sudo("sysctl -w kernel.unprivileged_userns_clone=1"))
        if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
            return Check(name, False, "kernel.apparmor_restrict_unprivileged_userns is 1",
                         _sudo("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"))
        unshare = shutil.which("unshare")
        if unshare is not None:
            ok, line = _first_line([unshare, "--user", "--map-root-user", "true"])
            if not ok:
                return Check(name, False, f"unshare --user failed: {line}",
                             _sudo("sysctl -w kernel.unprivileged_userns_clone=1"))
    return Check(name, True, f"allowed (user.max_user_namespaces={limit})")


def _subid_start() -> int:
    """A start above every range in /etc/subuid and /etc/subgid (for the suggested fix)."""
    end = SUBID_START
    for path in (SUBUID_PATH, SUBGID_PATH):
        for line in (_read(str(path)) or "").splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return -(-end // 65536) * 65536


def check_subids() -> Check:
    """The caller's ranges in /etc/subuid and /etc/subgid (a normal user's build ids)."""
    name = "subuid/subgid"
    if _root():
        return Check(name, True, "not needed as root (builds use unused ids from 905969664)")
    user = _user()
    names = {user, str(os.geteuid())}
    uid, gid = subordinate_range(SUBUID_PATH, names), subordinate_range(SUBGID_PATH, names)
    if uid is None or gid is None:
        missing = [str(p) for p, r in ((SUBUID_PATH, uid), (SUBGID_PATH, gid)) if r is None]
        start = _subid_start()
        span = f"{start}-{start + 65535}"
        return Check(name, False, f"no range for {user!r} in {' and '.join(missing)}",
                     _sudo(f"usermod --add-subuids {span} --add-subgids {span} {user}"))
    return Check(name, True, f"uids {uid[0]}+{uid[1]}, gids {gid[0]}+{gid[1]}")


def _privileged(path: str) -> bool:
    """Setuid root, or with file capabilities (as some distributions install newuidmap)."""
    st = os.stat(path)
    if st.st_uid == 0 and st.st_mode & stat.S_ISUID:
        return True
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def check_idmap_helpers() -> Check:
    """newuidmap and newgidmap (package uidmap) present and setuid (a normal user's maps)."""
    name = "newuidmap/newgidmap"
    paths = {b: shutil.which(b) or shutil.which(b, path="/usr/bin:/usr/sbin:/bin")
             for b in ("newuidmap", "newgidmap")}
    absent = [b for b, p in paths.items() if p is None]
    if absent:
        return Check(name, _root(), f"{' and '.join(absent)} not found"
                     + (" (needed by normal users only)" if _root() else ""),
                     _sudo("apt-get install uidmap"))
    plain = [p for p in paths.values() if p is not None and not _privileged(p)]
    if plain and not _root():
        return Check(name, False, f"{', '.join(plain)} not setuid root",
                     _sudo(f"chmod u+s {' '.join(plain)}"))
    return Check(name, True, ", ".join(p for p in paths.values() if p) + " (setuid)")


def cgroup_version(mountinfo: str | None = None) -> str:
    """``v2``, ``hybrid`` (v1 controllers and a v2 tree at unified/), ``v1`` or ``none``."""
    text = _read("/proc/self/mountinfo") if mountinfo is None else mountinfo
    kinds: dict[str, str] = {}
    for line in (text or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, fstype = left.split(), right.split()[:1]
        if len(fields) > 4 and fstype:
            kinds[fields[4]] = fstype[0]
    root = str(CGROUP_ROOT)
    if kinds.get(root) == "cgroup2":
        return "v2"
    if kinds.get(f"{root}/unified") == "cgroup2":
        return "hybrid"
    if any(p.startswith(root + "/") and k == "cgroup" for p, k in kinds.items()):
        return "v1"
    return "none"


def check_cgroups() -> Check:
    """The cgroup version and whether builds get cgroups (pids and memory limits)."""
    version = cgroup_version()
    name = "cgroups"
    if version == "none":
        return Check(name, False, "no cgroup file system mounted at /sys/fs/cgroup",
                     _sudo("mount -t cgroup2 none /sys/fs/cgroup"))
    if _root():
        return Check(name, True, f"{version}; root: the runtime creates each build's cgroup")
    if version != "v2":
        return Check(name, False, f"{version}; no delegation to normal users on v1 "
                     "controllers: builds run without pids/memory limits",
                     "add systemd.unified_cgroup_hierarchy=1 to GRUB_CMDLINE_LINUX in "
                     f"/etc/default/grub, then {_sudo('update-grub')} and reboot")
    own = next((line[3:] for line in (_read("/proc/self/cgroup") or "").splitlines()
                if line.startswith("0::")), "/")
    target = CGROUP_ROOT / own.lstrip("/")
    if os.access(target, os.W_OK) and os.access(target / "cgroup.procs", os.W_OK):
        controllers = _read(str(target / "cgroup.controllers")) or "none"
        return Check(name, True, f"v2, delegated: {target} (controllers: {controllers})")
    return Check(name, False, f"v2, but {target} is not delegated to {_user()}",
                 _sudo("systemctl edit user@.service  # add [Service] Delegate=pids memory"))


def check_fuse() -> Check:
    """``--inputs fuse``: /dev/fuse usable, fusermount3, ``user_allow_other`` (normal users)."""
    name = "fuse"
    if not os.path.exists("/dev/fuse") or not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
        return Check(name, False, "/dev/fuse missing", _sudo("modprobe fuse"))
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return Check(name, False, f"/dev/fuse not readable and writable by {_user()}",
                     _sudo("chmod 0666 /dev/fuse"))
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        return Check(name, False, "fusermount3 not found", _sudo("apt-get install fuse3"))
    if _root():
        return Check(name, True, f"/dev/fuse, {fusermount}")
    if not _privileged(fusermount):
        return Check(name, False, f"{fusermount} not setuid root",
                     _sudo(f"chmod u+s {fusermount}"))
    conf = _read(str(FUSE_CONF)) or ""
    if not any(line.strip() == "user_allow_other" for line in conf.splitlines()):
        return Check(name, False, f"user_allow_other not set in {FUSE_CONF}",
                     f"echo user_allow_other | {_sudo('tee -a')} {FUSE_CONF}")
    return Check(name, True, f"/dev/fuse, {fusermount} (setuid), user_allow_other")


def check_nix() -> Check:
    """``ocibuild nix-build`` and ``compare: nix`` cases: nix-build on PATH."""
    path = shutil.which("nix-build")
    if path is None:
        return Check("nix-build", False, "not found on PATH", _sudo("apt-get install nix-bin"))
    ok, line = _first_line([path, "--version"])
    return Check("nix-build", ok, f"{line} ({path})", "" if ok else _sudo("apt-get install "
                                                                          "--reinstall nix-bin"))


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_runtime_dir() -> Check:
    """The per-user directory of bundles and runtime state (see build.locations)."""
    try:
        return Check("runtime dir", True, str(user_dir()))
    except RuntimeUnavailable as e:
        return Check("runtime dir", False, e.message,
                     f"export XDG_RUNTIME_DIR=/run/user/{os.geteuid()}")


def check_store(store: Path | None = None) -> Check:
    """The store directory, or the directory it would be created in, is writable."""
    store = Path(store or default_store_dir())
    at = _existing(store)
    if at != store.absolute() and not at.is_dir():
        return Check("store", False, f"{store}: {at} is not a directory",
                     "use --store DIR (or $OCIBUILD_STORE) with a directory you can write")
    if not at.is_dir():
        return Check("store", False, f"{store} is not a directory", "use --store DIR")
    if not os.access(at, os.W_OK | os.X_OK):
        if at == store.absolute():  # the store itself: give it to the user
            fix = _sudo(f"chown -R {_user()} {at}")
        else:  # never touch the ancestor: make the store directory the user's
            fix = _sudo(f"install -d -o {_user()} {store.absolute()}")
        return Check("store", False, f"{at} is not writable by {_user()}",
                     f"{fix} (or use --store DIR)")
    made = "" if at == store.absolute() else f" (created on first use in {at})"
    return Check("store", True, f"{store} writable{made}")


def check_disk(store: Path | None = None, minimum: int = MIN_FREE) -> Check:
    """Free space on the store's file system."""
    at = _existing(Path(store or default_store_dir()))
    st = os.statvfs(at)
    free = st.f_bavail * st.f_frsize
    detail = f"{free / (1 << 30):.1f} GiB free on {at}"
    if free < minimum:
        return Check("free disk", False, f"{detail} (less than {minimum / (1 << 30):.1f} GiB)",
                     "ocibuild store gc --max-size 1G")
    return Check("free disk", True, detail)


# (check, required): optional ones only limit a feature.
CHECKS: tuple[tuple[Callable[..., Check], bool], ...] = (
    (functools.partial(check_runtime, "runc"), True),
    (functools.partial(check_runtime, "crun"), False),
    (functools.partial(check_runtime, "runsc"), False),
    (functools.partial(check_runtime, "bwrap"), False),
    (check_user_namespaces, True),
    (check_subids, True),
    (check_idmap_helpers, True),
    (check_cgroups, False),
    (check_fuse, False),
    (check_nix, False),
    (check_runtime_dir, True),
    (check_store, True),
    (check_disk, True),
)
_TAKES_STORE = {check_store, check_disk}


def run_checks(store: Path | None = None, runtime: str = "runc") -> list[tuple[Check, bool]]:
    """Every check's outcome with whether it is required (``runtime``: the one builds use)."""
    out = []
    for fn, required in CHECKS:
        if isinstance(fn, functools.partial) and fn.func is check_runtime:
            required = fn.args[0] == runtime
        out.append((fn(store) if fn in _TAKES_STORE else fn(), required))
    return out


@functools.cache
def first_failure(store: Path | None = None) -> Check | None:
    """The first required check that fails (None: all pass), once per process: what a build
    that cannot start can name instead of the runtime's error."""
    return next((c for c, required in run_checks(store) if required and not c.ok), None)


def format_line(check: Check, required: bool) -> str:
    """``ok``, ``FAIL`` (required) or ``warn`` (optional), the name, the detail, the fix."""
    status = "ok" if check.ok else "FAIL" if required else "warn"
    line = f"{status:<4}  {check.name}: {check.detail}"
    if not check.ok and check.fix:
        line += f"; fix: {check.fix}"
    return " ".join(line.splitlines())


def run(store: Path | None = None, *, as_json: bool = False, runtime: str = "runc") -> int:
    """Print the report; 0 if every required check passed, else 1."""
    results = run_checks(store, runtime)
    results.insert(4, (check_backend(runtime), True))
    ok = all(c.ok for c, required in results if required)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [{**c._asdict(), "required": r}
                                               for c, r in results]}, indent=2))
    else:
        for c, required in results:
            print(format_line(c, required))
    return 0 if ok else 1


def add_doctor(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``ocibuild doctor``."""
    p = sub.add_parser("doctor", help="check that this machine and user can run builds",
                       description="Check runtimes, user namespaces, subordinate ids, cgroups, "
                       "FUSE, Nix, the store and free disk (see docs/doctor.md). Exit 1 if a "
                       "required check fails.")
    _options(p)
    p.set_defaults(handler=lambda args: run(args.store, as_json=args.json,
                                            runtime=args.runtime))


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="castore directory (default: $OCIBUILD_STORE or ~/.cache/ocibuild/store)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--runtime", default="runc", choices=["runc", "crun", "runsc", "bwrap"],
                   help="the sandbox runtime builds will use: its check is required, the "
                   "others' optional (default: runc)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_ocibuild.build.doctor`` (what ``ocibuild doctor`` runs)."""
    p = argparse.ArgumentParser(prog="ocibuild doctor")
    _options(p)
    args = p.parse_args(argv)
    return run(args.store, as_json=args.json, runtime=args.runtime)


if __name__ == "__main__":
    sys.exit(main())
