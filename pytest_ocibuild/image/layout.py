"""The OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``) and a
``docker load`` archive, from layers the cache made.

Config, manifest and index are canonical JSON (sorted keys, no spaces); the config's
``created`` is fixed (1970-01-01T00:00:01Z, as Nix's dockerTools), so an image is a function
of its layers and options. Writing into a directory that already holds a layout keeps its
other tags; the tag written is replaced.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.atomic import atomic_write, staging_path
from pytest_ocibuild.image.cache import LayerCache
from pytest_ocibuild.image.tarball import MTIME, Written

CREATED = "1970-01-01T00:00:01Z"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF = "org.opencontainers.image.ref.name"


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Image:
    """What was written: the manifest's and config's digests and the layers, bottom first."""

    manifest: str
    manifest_size: int
    config: str
    config_bytes: bytes
    layers: tuple[Written, ...]
    tag: str


def make_config(layers: Sequence[Written], *, cmd: Sequence[str] = (),
                env: Sequence[str] = (), entrypoint: Sequence[str] = (),
                working_dir: str = "", arch: str = "amd64") -> dict[str, Any]:
    """An image config (OCI image-spec ``config.json``)."""
    conf: dict[str, Any] = {}
    if cmd:
        conf["Cmd"] = list(cmd)
    if entrypoint:
        conf["Entrypoint"] = list(entrypoint)
    if env:
        conf["Env"] = list(env)
    if working_dir:
        conf["WorkingDir"] = working_dir
    return {"architecture": arch, "os": "linux", "created": CREATED, "config": conf,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{w.diff_id}" for w in layers]},
            "history": [{"created": CREATED, "created_by": "ocibuild image"} for _ in layers]}


def build_image(cache: LayerCache, layers: Sequence[Written], *, tag: str,
                config: Mapping[str, Any]) -> Image:
    """Config and manifest blobs (in the cache's blob directory) for ``layers``."""
    config_bytes = canonical(config)
    config_digest, config_size = cache.put_blob(config_bytes)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": f"sha256:{config_digest}",
                           "size": config_size},
                "layers": [{"mediaType": LAYER, "digest": f"sha256:{w.digest}", "size": w.size}
                           for w in layers]}
    digest, size = cache.put_blob(canonical(manifest))
    return Image(digest, size, config_digest, config_bytes, tuple(layers), tag)


def write_layout(cache: LayerCache, image: Image, out: Path) -> None:
    """Write (or add ``image.tag`` to) the OCI image layout at ``out``."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp"
    tmp.mkdir(exist_ok=True)
    digests = [image.config, image.manifest, *(w.digest for w in image.layers)]
    for d in digests:
        _link_blob(cache.blob_path(d), blobs / d, tmp)
    atomic_write(out / "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}), tmp)
    manifests = []
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        old = json.loads((out / "index.json").read_bytes())
        manifests = [m for m in old.get("manifests", [])
                     if m.get("annotations", {}).get(REF) != image.tag]
    manifests.append({"mediaType": MANIFEST, "digest": f"sha256:{image.manifest}",
                      "size": image.manifest_size, "annotations": {REF: image.tag}})
    manifests.sort(key=lambda m: (m.get("annotations", {}).get(REF, ""), m["digest"]))
    atomic_write(out / "index.json", canonical({"schemaVersion": 2, "mediaType":
                                                "application/vnd.oci.image.index.v1+json",
                                                "manifests": manifests}), tmp)
    with contextlib.suppress(OSError):
        tmp.rmdir()


def _link_blob(src: Path, dest: Path, tmp: Path) -> None:
    """Hard-link (or copy) ``src`` to ``dest`` unless a file of its size is there."""
    size = src.stat().st_size
    with contextlib.suppress(OSError):
        if dest.stat().st_size == size:
            return
    staging = staging_path(tmp, "blob")
    try:
        try:
            os.link(src, staging)
        except OSError:
            shutil.copyfile(src, staging)
        os.replace(staging, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


def _member(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mtime, ti.mode = kind, size, MTIME, 0o755 if kind == tarfile.DIRTYPE \
        else 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_docker_archive(cache: LayerCache, image: Image, dest: Path, repo_tag: str) -> None:
    """A ``docker load`` tar: ``manifest.json``, the config, each layer as ``<diff_id>/layer.tar``
    (uncompressed), written through a staging file next to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{os.getpid()}-{os.urandom(4).hex()}"
    manifest = [{"Config": f"{image.config}.json", "RepoTags": [repo_tag],
                 "Layers": [f"{w.diff_id}/layer.tar" for w in image.layers]}]
    try:
        with open(staging, "xb") as f, tarfile.open(fileobj=f, mode="w|",
                                                    format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_member(f"{image.config}.json", len(image.config_bytes)),
                        _Bytes(image.config_bytes))
            done = set()
            for w in image.layers:
                if w.diff_id in done:
                    continue
                done.add(w.diff_id)
                tar.addfile(_member(w.diff_id, kind=tarfile.DIRTYPE))
                with gzip.open(cache.blob_path(w.digest), "rb") as layer:
                    tar.addfile(_member(f"{w.diff_id}/layer.tar", w.tar_size), layer)
            body = canonical(manifest)
            tar.addfile(_member("manifest.json", len(body)), _Bytes(body))
        os.replace(staging, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return out
