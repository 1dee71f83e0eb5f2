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


def _apply(layer: Path, rootfs: Path) -> None:
    """Extract one layer tar over ``rootfs``, honouring whiteouts."""
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
            if not (member.isdir() and target.is_dir()) and os.path.lexists(target):
                _remove(target)
            tar.extract(member, rootfs, set_attrs=True, filter="tar")


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
    for layer in manifest.get("layers", []):
        _apply(_blob(layout, layer["digest"]), rootfs)
    return config


@dataclass(frozen=True)
class Ran:
    """A command run in an image: exit code and output."""

    exit_code: int
    stdout: str
    stderr: str


def runtime_spec(args: Sequence[str], env: Sequence[str], cwd: str = "/") -> dict[str, Any]:
    """A minimal OCI runtime spec for ``runc`` as root: ``runc spec``'s defaults, no tty."""
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
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": list(args),
                    "env": list(env), "cwd": cwd or "/", "noNewPrivileges": True,
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")}},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "ocibuild-image",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts",
                                                       "mount")],
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
