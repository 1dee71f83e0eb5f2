"""Reproducible layer tars streamed from the castore.

Entries come parents first, each tree in NAR order (children sorted bytewise), trees in the
order given; every entry has mtime 1 (as in /nix/store), uid/gid 0 and no owner names. Modes
are the Nix store's: directories and executables 0555, other files 0444; the directories
leading to the trees (``nix``, ``nix/store``) are 0755. POSIX (pax) format; gzip with mtime 0
and no file name, so the same trees give the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.castore.trees import walk
from pytest_ocibuild.errors import NotFound

MTIME = 1
GZIP_LEVEL = 6


@dataclass(frozen=True, slots=True)
class Written:
    """What a layer's bytes hash to: compressed ``digest``/``size``, uncompressed ``diff_id``."""

    digest: str  # sha256 hex of the gzip stream
    size: int
    diff_id: str  # sha256 hex of the tar
    tar_size: int


class _Hashing:
    """A write-only stream that hashes and counts what passes to ``out``."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
    return ti


def parents(paths: Iterable[str]) -> list[str]:
    """The directories above ``paths`` (relative, sorted, parents first)."""
    out: set[str] = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(out)


def write_tar(store: Store, trees: Sequence[tuple[str, Node]], out: BinaryIO) -> None:
    """Write a tar of ``trees`` ((absolute image path, node), in this order) to ``out``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for d in parents(p for p, _ in trees):
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
        for top, node in trees:
            base = os.fsencode(top.strip("/"))
            for rel, n in walk(store, node, base):
                name = os.fsdecode(rel)
                if isinstance(n, DirectoryNode):
                    tar.addfile(_info(name, tarfile.DIRTYPE, 0o555))
                elif isinstance(n, FileNode):
                    blob = store.open_blob(n.digest)
                    if blob is None:
                        raise NotFound(f"blob {n.digest.hex} ({name}) is not in the store")
                    with blob:
                        tar.addfile(_info(name, tarfile.REGTYPE,
                                          0o555 if n.executable else 0o444, n.size), blob)
                else:
                    tar.addfile(_info(name, tarfile.SYMTYPE, 0o777,
                                      link=os.fsdecode(n.target)))


def write_layer(store: Store, trees: Sequence[tuple[str, Node]], out: BinaryIO) -> Written:
    """Write the gzipped tar of ``trees`` to ``out``; its digests and sizes."""
    packed = _Hashing(out)
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed,  # type: ignore[arg-type]
                       compresslevel=GZIP_LEVEL, mtime=0) as gz:
        plain = _Hashing(gz)  # type: ignore[arg-type]
        write_tar(store, trees, plain)  # type: ignore[arg-type]
    return Written(packed.sha.hexdigest(), packed.size, plain.sha.hexdigest(), plain.size)
