"""The layer cache: each layer is made once per hash, in the store, without races.

Layout under ``<store>/image``: ``blobs/sha256/<digest>`` (gzipped layer tars and other
image blobs), ``layers/<key>.json`` (what a layer key made: digests and sizes), ``locks/``
and ``tmp/``. A layer's key is the sha256 of its trees (image paths and castore digests) and
the tar format version, so the same trees are one cache entry whatever image they are in.

``get`` looks for the record, and on a miss takes the key's lock (an flock: it excludes other
threads and other processes alike), looks again (someone may have made it while we waited),
writes the layer to a staging file of its own (a unique name, never one derived from the key:
Nixery's writers shared ``staging/<hash>`` and one renamed away the file another was about to
rename, "rename ...: no such file or directory"), renames it into ``blobs/``, and only then
writes the record. A record whose blob is missing or of the wrong size counts as a miss; a
hit touches the record, whose mtime is its last use for ``image.gc``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from pytest_ocibuild.build.atomic import atomic_write, file_lock, staging_path
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.image.tarball import Written, write_layer

FORMAT = "ocibuild-layer-1:tar-pax:mtime1:gzip6"


def node_id(node: Node) -> str:
    """A string naming ``node``'s contents exactly."""
    if isinstance(node, DirectoryNode):
        return f"d:{node.digest.hex}"
    if isinstance(node, FileNode):
        return f"f:{node.digest.hex}:{node.size}:{int(node.executable)}"
    return "l:" + node.target.hex()


def layer_key(trees: Sequence[tuple[str, Node]]) -> str:
    """The cache key of a layer of ``trees``."""
    text = "\n".join([FORMAT, *(f"{p}\t{node_id(n)}" for p, n in trees)])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class LayerCache:
    """Gzipped layer tars kept under ``root`` (``<store dir>/image``)."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.records = self.root / "layers"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.records, self.tmp, self.root / "locks"):
            d.mkdir(parents=True, exist_ok=True)
        self.made = 0  # layers this instance wrote (the rest were found)
        self._count = threading.Lock()

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest

    def lookup(self, key: str) -> Written | None:
        """The recorded layer ``key`` whose blob is present with its size, else None."""
        try:
            d = json.loads((self.records / f"{key}.json").read_bytes())
            w = Written(str(d["digest"]), int(d["size"]), str(d["diff_id"]), int(d["tar_size"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            if os.stat(self.blob_path(w.digest)).st_size != w.size:
                return None
        except OSError:
            return None
        return w

    def get(self, trees: Sequence[tuple[str, Node]]) -> Written:
        """The layer of ``trees``, made now unless it is recorded."""
        key = layer_key(trees)
        found = self.lookup(key)
        if found is not None:
            with contextlib.suppress(OSError):
                os.utime(self.records / f"{key}.json")  # last used, for image.gc
            return found
        with file_lock(self.root / "locks" / f"{key}.lock"):
            found = self.lookup(key)  # made while we waited for the lock
            if found is not None:
                return found
            written = self._make(trees)
            self.record(key, written)
            with self._count:
                self.made += 1
            return written

    def _make(self, trees: Sequence[tuple[str, Node]]) -> Written:
        """Write the layer to a private staging file and rename it into ``blobs/``."""
        staging = staging_path(self.tmp, "layer")
        try:
            with open(staging, "xb") as out:
                written = write_layer(self.store, trees, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(staging, self.blob_path(written.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise
        return written

    def record(self, key: str, written: Written) -> None:
        data = {"digest": written.digest, "size": written.size, "diff_id": written.diff_id,
                "tar_size": written.tar_size, "format": FORMAT}
        atomic_write(self.records / f"{key}.json", json.dumps(data, sort_keys=True).encode(),
                     self.tmp)

    def put_blob(self, data: bytes) -> tuple[str, int]:
        """Store a small blob (config, manifest) by its sha256; ``(digest, size)``."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not (path.exists() and path.stat().st_size == len(data)):
            atomic_write(path, data, self.tmp)
        return digest, len(data)
