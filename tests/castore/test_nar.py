"""NAR rendering: the facts.md vectors and a differential check against ``nix-store --dump``."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nar import nar_chunks, nar_hash, sri
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.castore.store import Store, put_blob
from pytest_ocibuild.errors import NotFound, StoreError

from .conftest import make_tree

NIX_STORE = shutil.which("nix-store")
needs_nix = pytest.mark.skipif(NIX_STORE is None, reason="nix-store not installed")


def nar(store: Store, node: FileNode | DirectoryNode | SymlinkNode) -> bytes:
    return b"".join(nar_chunks(store, node))


def test_file_vector(store: Store) -> None:
    node = FileNode(put_blob(store, b"Hello World!"), 12)
    data = nar(store, node)
    assert len(data) == 128
    assert hashlib.sha256(data).hexdigest() == (
        "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040"
    )
    digest, size = nar_hash(store, node)
    assert (digest.hex(), size) == (hashlib.sha256(data).hexdigest(), 128)


def test_symlink_vector(store: Store) -> None:
    data = nar(store, SymlinkNode(b"/nix/store/somewhereelse"))
    assert len(data) == 136
    assert hashlib.sha256(data).hexdigest() == (
        "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1"
    )


def test_token_layout(store: Store) -> None:
    data = nar(store, FileNode(put_blob(store, b"Hello World!"), 12, executable=True))
    assert data[:8] == (13).to_bytes(8, "little")
    assert data[8:24] == b"nix-archive-1\0\0\0"
    assert b"\x0a\0\0\0\0\0\0\0executable" in data
    assert b"Hello World!\0\0\0\0" in data
    assert len(data) % 8 == 0


def test_empty_directory(store: Store) -> None:
    d = Directory()
    node = DirectoryNode(store.put_directory(d), d.size)
    data = nar(store, node)
    assert data.endswith(b"directory\0\0\0\0\0\0\0" + (1).to_bytes(8, "little") + b")" + b"\0" * 7)


def test_sri() -> None:
    raw = bytes.fromhex("03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040")
    assert sri(raw) == "sha256-" + base64.b64encode(raw).decode()
    assert sri(raw) == "sha256-A+f2O+MLBl14vPYV9Uc1Rf2062mqQW9DSVtOBc37gEA="
    with pytest.raises(ValueError):
        sri(b"short")


def test_missing_objects(store: Store) -> None:
    with pytest.raises(NotFound, match=Digest.of(b"x").hex):
        nar(store, FileNode(Digest.of(b"x"), 1))
    with pytest.raises(NotFound, match="directory"):
        nar(store, DirectoryNode(Digest.of(b"y"), 0))


def test_size_mismatch_is_an_error(store: Store) -> None:
    digest = put_blob(store, b"Hello World!")
    for wrong in (11, 13):
        with pytest.raises(StoreError, match="its file node says"):
            nar(store, FileNode(digest, wrong))


def _nix_dump(path: Path) -> bytes:
    assert NIX_STORE is not None
    return subprocess.run([NIX_STORE, "--dump", str(path)], check=True, capture_output=True).stdout


@needs_nix
def test_matches_nix_store_dump(store: Store, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    node = ingest_path(store, root)
    ours = nar(store, node)
    theirs = _nix_dump(root)
    assert ours == theirs
    digest, size = nar_hash(store, node)
    assert digest == hashlib.sha256(theirs).digest() and size == len(theirs)
    for sub in ("hello", "run.sh", "empty", "empty-dir", "a", "abs-link", "dangling"):
        assert nar(store, ingest_path(store, root / sub)) == _nix_dump(root / sub), sub


@needs_nix
def test_matches_nix_on_large_and_unaligned_files(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for i, size in enumerate((1, 7, 8, 9, (1 << 20) - 1, 1 << 20, (3 << 20) + 5)):
        (root / f"f{i}").write_bytes(os.urandom(size))
    store = LocalStore(tmp_path / "s")
    node = ingest_path(store, root)
    theirs = _nix_dump(root)
    assert nar_hash(store, node) == (hashlib.sha256(theirs).digest(), len(theirs))


def test_streams_in_constant_memory(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    with store.blob_writer() as w:
        block = os.urandom(1 << 20)
        for _ in range(40):
            w.write(block)
        digest = w.commit()
    node = FileNode(digest, 40 << 20)
    tracemalloc.start()
    try:
        _, size = nar_hash(store, node)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 40 * (1 << 20) + 112  # 128-byte vector minus 12 content, 4 pad
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_chunks_are_bounded(tmp_path: Path) -> None:
    store = MemoryStore()
    root = make_tree(tmp_path / "t")
    (root / "big").write_bytes(b"z" * (3 << 20))
    node = ingest_path(store, root)
    chunks = list(nar_chunks(store, node))
    assert max(map(len, chunks)) <= 1 << 20
    assert len(chunks) > 3
