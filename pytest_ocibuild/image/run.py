"""Reading back an image layout: unpack its layers into a rootfs and run a command there.

``unpack`` applies the layers of one tag of an OCI image layout in order (gzip or plain tar,
OCI whiteouts honoured, entries outside the rootfs refused), ``run_in`` starts a command in
that rootfs with ``runc`` (a minimal runtime spec like ``runc spec``'s: fresh namespaces,
read-only root, no network) and gives its exit code and output. The plugin's ``image:`` case
key and ``ocibuild_image`` fixture use both; the real-tools tests do the same with umoci.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.errors import InvalidRequest

REF = "org.opencontainers.image.ref.name"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def read_image(layout: Path, tag: str = "latest") -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config of ``tag`` in the layout at ``layout``."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        found = [m for m in index.get("manifests", [])
                 if m.get("annotations", {}).get(REF) == tag]
        if not found:
            raise InvalidRequest(f"{layout}: no image tagged {tag!r}")
        manifest = json.loads(_blob(layout, found[0]["digest"]).read_bytes())
        config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidRequest(f"{layout}: not a readable OCI image layout: {e}") from None
    return manifest, config


def _open_layer(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _apply(layer: Path, rootfs: Path, modes: dict[Path, int]) -> None:
    """Extract one layer tar over ``rootfs``, honouring whiteouts. Not as root, directories
    are extracted writable by their owner and their modes recorded in ``modes`` (root
    writes into a 0555 directory, a normal user cannot)."""
    with _open_layer(layer) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            name = member.name.lstrip("/")
            parent, _, base = name.rpartition("/")
            target = rootfs / name
            if base == OPAQUE:
                d = rootfs / parent
                for child in os.listdir(d) if d.is_dir() else []:
                    _remove(d / child)
                continue
            if base.startswith(WHITEOUT):
                _remove(rootfs / parent / base[len(WHITEOUT):])
                continue
            _check_inside(rootfs, name, member, layer)
            if not (member.isdir() and target.is_dir()) and os.path.lexists(target):
                _remove(target)
            if member.isdir() and os.geteuid() != 0:
                modes[target] = member.mode & 0o7777
                member.mode |= 0o700
            if _FILTERS:  # Python >= 3.11.4 / 3.12: tarfile checks the same again
                tar.extract(member, rootfs, set_attrs=True, filter="tar")
            else:  # Debian 12's python3 3.11.2 has no extraction filters
                tar.extract(member, rootfs, set_attrs=True)


_FILTERS = hasattr(tarfile, "tar_filter")


def _check_inside(rootfs: Path, name: str, member: tarfile.TarInfo, layer: Path) -> None:
    """Refuse an entry that would land outside ``rootfs`` (``..``, or through a symlink an
    earlier entry made), or a hard link to something outside it."""
    top = os.path.realpath(rootfs)
    where = os.path.realpath(os.path.join(top, os.path.dirname(name)))
    targets = [os.path.join(where, os.path.basename(name))]
    if member.islnk():
        targets.append(os.path.realpath(os.path.join(top, member.linkname.lstrip("/"))))
    for t in targets:
        if os.path.commonpath([top, os.path.normpath(t)]) != top:
            raise InvalidRequest(f"{layer}: layer entry {member.name!r} would be written "
                                 f"outside the root filesystem")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def unpack(layout: Path, rootfs: Path, tag: str = "latest") -> dict[str, Any]:
    """Apply the layers of ``tag`` to ``rootfs`` (created if missing); the image config."""
    manifest, config = read_image(layout, tag)
    rootfs.mkdir(parents=True, exist_ok=True)
    modes: dict[Path, int] = {}  # a normal user's read-only directories, made so at the end
    for layer in manifest.get("layers", []):
        _apply(_blob(layout, layer["digest"]), rootfs, modes)
    for path in sorted(modes, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, modes[path])
    return config


@dataclass(frozen=True)
class Ran:
    """A command run in an image: exit code and output."""

    exit_code: int
    stdout: str
    stderr: str


def runtime_spec(args: Sequence[str], env: Sequence[str], cwd: str = "/", *,
                 rootless: bool | None = None) -> dict[str, Any]:
    """A minimal OCI runtime spec: ``runc spec``'s defaults, no tty; ``rootless`` (default:
    not root) as ``runc spec --rootless`` makes it: a user namespace mapping container root
    to the caller (who unpacked the rootfs) and /sys bound read-only instead of mounted."""
    rootless = os.geteuid() != 0 if rootless is None else rootless
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    kinds = ["pid", "network", "ipc", "uts", "mount"]
    ids: dict[str, Any] = {}
    if rootless:
        kinds.append("user")
        ids = {"uidMappings": [{"containerID": 0, "hostID": os.geteuid(), "size": 1}],
               "gidMappings": [{"containerID": 0, "hostID": os.getegid(), "size": 1}]}
        mounts[-1] = {"destination": "/sys", "type": "none", "source": "/sys",
                      "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": list(args),
                    "env": list(env), "cwd": cwd or "/", "noNewPrivileges": True,
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")}},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "ocibuild-image",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in kinds], **ids,
                  "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                  "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]},
    }


def run_in(bundle: Path, args: Sequence[str], *, config: Mapping[str, Any] | None = None,
           runtime: str = "runc", timeout: float = 60.0) -> Ran:
    """Run ``args`` (or the image's Entrypoint + Cmd when empty) in ``bundle/rootfs``."""
    conf = (config or {}).get("config", {}) or {}
    argv = list(args) or [*conf.get("Entrypoint", []), *conf.get("Cmd", [])]
    if not argv:
        raise InvalidRequest("image: no command to run (give one, or --cmd when exporting)")
    env = list(conf.get("Env", [])) or ["PATH=/bin"]
    spec = runtime_spec(argv, env, conf.get("WorkingDir", "/"))
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    binary = shutil.which(runtime)
    if binary is None:
        raise InvalidRequest(f"image: {runtime} is not on PATH")
    state = bundle / "runtime-state"
    state.mkdir(exist_ok=True)
    cid = f"ocibuild-image-{os.getpid()}-{os.urandom(4).hex()}"
    base = [binary, "--root", str(state)]
    try:
        proc = subprocess.run([*base, "run", "--bundle", str(bundle), cid],
                              capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return Ran(-1, "", f"timed out after {timeout:g}s")
    finally:
        subprocess.run([*base, "delete", "--force", cid], capture_output=True, check=False)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def run_image(layout: Path, work: Path, args: Sequence[str] = (), *, tag: str = "latest",
              runtime: str = "runc", timeout: float = 60.0) -> Ran:
    """Unpack ``tag`` of ``layout`` into a fresh bundle under ``work`` and run ``args``."""
    bundle = work / f"bundle-{os.urandom(4).hex()}"
    bundle.mkdir(parents=True)
    try:
        config = unpack(layout, bundle / "rootfs", tag)
        return run_in(bundle, args, config=config, runtime=runtime, timeout=timeout)
    finally:
        remove_tree(bundle)
