"""Packs: small blobs and directories of an ingest in one file, with an index (LocalStore)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pytest_ocibuild.build.gc import gc, verify
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode
from pytest_ocibuild.castore.pack import (
    BLOB,
    DIRECTORY,
    PACK_MAX,
    PackWriter,
    decode_index,
    encode_index,
)
from pytest_ocibuild.castore.store import read_blob
from pytest_ocibuild.castore.trees import tree_dict, walk
from pytest_ocibuild.errors import StoreError
from tests.castore.conftest import make_tree

BIG = os.urandom(PACK_MAX + 1)


def _tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "tree")
    (root / "big").write_bytes(BIG)
    return root


def _packs(store: LocalStore) -> list[Path]:
    return sorted((store.root / "packs").iterdir())


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_ingest_packs_small_objects_and_another_store_reads_them(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    root = ingest_path(store, _tree(tmp_path))
    assert [p.suffix for p in _packs(store)] == [".pack"]  # one file: data, index, footer
    loose = _files(store.root / "blobs") + _files(store.root / "directories")
    assert [p.name for p in loose] == [Digest.of(BIG).hex]  # only the big blob is a file
    other = LocalStore(tmp_path / "s")  # what another process sees
    for path, node in walk(other, root):
        if isinstance(node, FileNode):
            assert other.has_blob(node.digest, node.size), path
            assert read_blob(other, node.digest) == (tmp_path / "tree" / os.fsdecode(path)
                                                     ).read_bytes()
        elif isinstance(node, DirectoryNode):
            assert other.has_directory(node.digest)
    assert tree_dict(other, root) == tree_dict(store, root)
    assert {d.hex for d in other.iter_blobs()} == {
        n.digest.hex for _, n in walk(store, root) if isinstance(n, FileNode)}
    assert len(list(other.iter_directories())) == 5  # root, empty-dir, a, a/b, a/b/c


def test_ingest_in_a_child_process_is_visible_at_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.packs.refresh()  # a stale view: the child publishes right after
    tree = _tree(tmp_path)
    code = ("import sys; from pytest_ocibuild.castore.ingest import ingest_path;"
            "from pytest_ocibuild.castore.local import LocalStore;"
            "print(ingest_path(LocalStore(sys.argv[1]), sys.argv[2]).digest.hex)")
    out = subprocess.run([sys.executable, "-c", code, str(store.root), str(tree)],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert store.get_directory(Digest.from_hex(out)) is not None
    assert read_blob(store, Digest.of(b"Hello World!")) == b"Hello World!"


def test_reingesting_writes_nothing_new(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    tree = _tree(tmp_path)
    root = ingest_path(store, tree)
    before = sorted(p.name for p in _files(store.root))
    assert ingest_path(LocalStore(tmp_path / "s"), tree) == root
    assert sorted(p.name for p in _files(store.root)) == before


def test_failed_ingest_publishes_nothing(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.mkfifo(tree / "a" / "zz-fifo")
    store = LocalStore(tmp_path / "s")
    with pytest.raises(StoreError, match="zz-fifo: is a fifo"):
        ingest_path(store, tree)
    assert _packs(store) == [] and store.staging_files() == []
    assert not LocalStore(tmp_path / "s").has_blob(Digest.of(b"Hello World!"))


def test_blob_path_unpacks_for_hardlinking(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    ingest_path(store, _tree(tmp_path))
    digest = Digest.of(b"#!/bin/sh\necho hi\n")
    assert store.packed(digest) is not None
    plain = store.blob_path(digest)
    twin = store.blob_path(digest, executable=True)
    assert plain is not None and twin is not None
    assert plain.read_bytes() == twin.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (plain.stat().st_mode & 0o777, twin.stat().st_mode & 0o777) == (0o444, 0o555)
    assert store.blob_path(Digest.of(b"absent")) is None


def test_a_flipped_byte_in_a_pack_is_caught(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    ingest_path(store, _tree(tmp_path))
    digest = Digest.of(b"Hello World!")
    pack, offset, _size = store.packed(digest)  # type: ignore[misc]
    path = store.root / "packs" / f"{pack}.pack"
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"J")
    with pytest.raises(StoreError, match=f"blob {digest.hex} .pack {pack}. is corrupt"):
        store.open_blob(digest)
    report = verify(store.root)
    assert [line.split(":")[0] for line in report.corrupt] == [
        f"blob {digest.hex} (pack {pack})"]


@pytest.mark.parametrize("damage", ["truncated", "index"])
def test_damaged_pack_is_ignored_reported_and_repaired(tmp_path: Path, damage: str) -> None:
    tree = _tree(tmp_path)
    store = LocalStore(tmp_path / "s")
    root = ingest_path(store, tree)
    (pack,) = _packs(store)
    os.chmod(pack, 0o644)
    data = pack.read_bytes()
    if damage == "truncated":  # a power loss without fsync: the tail never reached the disk
        pack.write_bytes(data[: len(data) // 2])
        why = "no pack footer (truncated?)"
    else:  # a flipped byte in the index (just before the 16-byte footer and its checksum)
        at = len(data) - 16 - 32 - 1
        pack.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
        why = "index checksum mismatch"
    fresh = LocalStore(tmp_path / "s")
    assert fresh.packs.refresh()  # a broken pack: ignored, not fatal
    assert not fresh.has_blob(Digest.of(b"Hello World!"))
    assert f"pack {pack.stem}: {why}" in verify(store.root).corrupt
    assert ingest_path(fresh, tree) == root  # repaired by writing a new pack
    assert read_blob(LocalStore(tmp_path / "s"), Digest.of(b"Hello World!")) == b"Hello World!"


def test_index_format_round_trip_and_errors() -> None:
    rows = [(DIRECTORY, b"\x01" * 32, 5, 7), (BLOB, b"\x02" * 32, 0, 5)]
    data = encode_index(rows)
    assert decode_index(data) == sorted(rows)
    for bad, why in ((b"nope" + data[4:], "not a pack index"),
                     (data[:-1] + b"\x00", "checksum mismatch")):
        with pytest.raises(ValueError, match=why):
            decode_index(bad)


def test_writer_starts_a_new_pack_at_its_limit_and_threads_share_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    blobs = [os.urandom(1000) + bytes([i % 256, i // 256]) for i in range(4000)]
    with PackWriter(store, limit=1 << 20) as w:
        threads = [threading.Thread(target=lambda part=part: [w.put_bytes(b) for b in part])
                   for part in (blobs[0::2], blobs[1::2])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(w.published) >= 3
    other = LocalStore(tmp_path / "s")
    assert all(read_blob(other, Digest.of(b)) == b for b in blobs)
    assert verify(store.root).ok


def test_writer_starts_a_new_pack_at_its_entry_limit(tmp_path: Path) -> None:
    """Tiny files never reach the byte limit: the entry limit bounds a writer's memory."""
    store = LocalStore(tmp_path / "s")
    with PackWriter(store, entries=100) as w:
        for i in range(250):
            w.put_bytes(b"%d" % i)
    assert len(w.published) == 3
    assert all(LocalStore(tmp_path / "s").has_blob(Digest.of(b"%d" % i)) for i in range(250))


def _age(store: LocalStore) -> None:
    for p in _packs(store):
        os.utime(p, (1, 1))


def test_gc_deletes_unreachable_packs_and_rewrites_mostly_dead_ones(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    a = tmp_path / "a"
    a.mkdir()
    (a / "keep").write_bytes(b"kept\n")
    (a / "drop").write_bytes(os.urandom(40_000))
    kept = ingest_path(store, a)
    b = tmp_path / "b"
    b.mkdir()
    (b / "gone").write_bytes(b"unreachable\n")
    ingest_path(store, b)
    _age(store)
    keep_node = FileNode(Digest.of(b"kept\n"), 5, False)
    stale = LocalStore(tmp_path / "s")
    stale.packs.refresh()  # loaded before gc rewrote the packs
    report = gc(store.root, roots=[keep_node], grace=0)
    assert (report.blobs_removed, report.dirs_removed) == (2, 2)
    assert report.bytes_freed > 40_000
    assert len(_packs(store)) == 1  # one rewritten pack holding only "kept"
    assert read_blob(stale, keep_node.digest) == b"kept\n"  # found in its new pack
    assert not LocalStore(tmp_path / "s").has_blob(Digest.of(b"unreachable\n"))
    assert LocalStore(tmp_path / "s").get_directory(kept.digest) is None  # not a root
    assert verify(store.root).ok


def test_gc_spares_young_and_live_packs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    root = ingest_path(store, _tree(tmp_path))
    (pack,) = _packs(store)
    assert gc(store.root, grace=3600).bytes_freed == 0  # young: a build may still record
    _age(store)
    gc(store.root, roots=[root], grace=0)
    assert _packs(store) == [pack]
    gc(store.root, grace=0)
    assert _packs(store) == []
