"""Store conformance (MemoryStore and LocalStore) and LocalStore's on-disk guarantees."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.castore.store import Store, open_store, put_blob, read_blob
from pytest_ocibuild.errors import StoreError

HELLO = "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"


def sample_directory() -> Directory:
    child = Directory({b".keep": FileNode(Digest.of(b""), 0)})
    return Directory(
        {
            b"sub": child.node(),
            b"hello": FileNode(Digest.from_hex(HELLO), 12, executable=True),
            b"link": SymlinkNode(b"hello"),
        }
    )


# -- conformance: every backend ---------------------------------------------------------


def test_put_and_read_blob(store: Store) -> None:
    digest = put_blob(store, b"Hello World!")
    assert digest.hex == HELLO
    assert store.has_blob(digest)
    assert read_blob(store, digest) == b"Hello World!"


def test_streamed_blob_equals_one_shot(store: Store) -> None:
    with store.blob_writer() as w:
        for part in (b"Hello", b" ", b"World!"):
            w.write(part)
        digest = w.commit()
    assert digest == put_blob(store, b"Hello World!")  # idempotent second put
    assert read_blob(store, digest) == b"Hello World!"


def test_empty_blob(store: Store) -> None:
    digest = put_blob(store, b"")
    assert digest == Digest.of(b"")
    assert read_blob(store, digest) == b""


def test_absent_objects_are_none(store: Store) -> None:
    missing = Digest.of(b"never stored")
    assert not store.has_blob(missing)
    assert store.open_blob(missing) is None
    assert read_blob(store, missing) is None
    assert store.get_directory(missing) is None


def test_writer_abort_leaves_nothing(store: Store) -> None:
    w = store.blob_writer()
    w.write(b"partial")
    w.abort()
    assert not store.has_blob(Digest.of(b"partial"))
    _assert_no_staging(store)


def test_large_writer_abort_leaves_nothing(store: Store) -> None:
    big = os.urandom(3 << 20)  # beyond LocalStore's in-memory head: a staging file exists
    w = store.blob_writer()
    w.write(big[: 2 << 20])
    w.write(big[2 << 20 :])
    if isinstance(store, LocalStore):  # an unnamed (O_TMPFILE) staging file has no name
        assert len(store.staging_files()) == (0 if store.tmpfile else 1)
    w.abort()
    assert not store.has_blob(Digest.of(big))
    _assert_no_staging(store)
    with store.blob_writer() as w2:
        w2.write(big)
        assert w2.commit() == Digest.of(big)
    assert read_blob(store, Digest.of(big)) == big
    _assert_no_staging(store)


def test_context_manager_abort_on_exception(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.blob_writer() as w:
        w.write(b"doomed")
        raise RuntimeError("boom")
    assert not store.has_blob(Digest.of(b"doomed"))
    _assert_no_staging(store)


def test_context_manager_without_commit_aborts(store: Store) -> None:
    with store.blob_writer() as w:
        w.write(b"forgotten")
    assert not store.has_blob(Digest.of(b"forgotten"))
    _assert_no_staging(store)


def test_writer_refuses_use_after_commit(store: Store) -> None:
    w = store.blob_writer()
    w.write(b"x")
    w.commit()
    with pytest.raises(ValueError):
        w.write(b"y")
    with pytest.raises(ValueError):
        w.commit()


def test_put_and_get_directory(store: Store) -> None:
    directory = sample_directory()
    digest = store.put_directory(directory)
    assert digest == directory.digest
    assert store.put_directory(directory) == digest
    got = store.get_directory(digest)
    assert got == directory
    assert got is not None and got.encode() == directory.encode()
    assert dict(got)[b"hello"] == FileNode(Digest.from_hex(HELLO), 12, True)


def _assert_no_staging(store: Store) -> None:
    if isinstance(store, LocalStore):
        assert store.staging_files() == []


# -- LocalStore specifics ----------------------------------------------------------------


def test_layout_and_modes(local_store: LocalStore) -> None:
    digest = put_blob(local_store, b"Hello World!")
    path = local_store.root / "blobs" / HELLO[:2] / HELLO
    assert path.read_bytes() == b"Hello World!"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert local_store.blob_path(digest) == path
    d = sample_directory()
    dpath = local_store.root / "directories" / d.digest.hex[:2] / d.digest.hex
    local_store.put_directory(d)
    assert dpath.read_bytes() == d.encode()


def test_open_store_urls(tmp_path: Path) -> None:
    for url in (tmp_path / "a", f"local://{tmp_path / 'b'}"):
        s = open_store(url)
        assert isinstance(s, LocalStore)
        digest = put_blob(s, b"via url")
        assert read_blob(open_store(url), digest) == b"via url"


def test_root_creation_is_idempotent(tmp_path: Path) -> None:
    a = LocalStore(tmp_path / "s")
    digest = put_blob(a, b"kept")
    b = LocalStore(tmp_path / "s")
    assert read_blob(b, digest) == b"kept"


def test_executable_twin(local_store: LocalStore) -> None:
    digest = put_blob(local_store, b"#!/bin/sh\n")
    plain = local_store.blob_path(digest)
    twin = local_store.blob_path(digest, executable=True)
    assert plain is not None and twin is not None
    assert twin == plain.with_name(plain.name + ".x")
    assert stat.S_IMODE(twin.stat().st_mode) == 0o555
    assert stat.S_IMODE(plain.stat().st_mode) == 0o444
    assert twin.read_bytes() == b"#!/bin/sh\n"
    assert not os.path.samefile(plain, twin)
    assert local_store.blob_path(digest, executable=True) == twin  # reused
    assert list(local_store.iter_blobs()) == [digest]  # twins are not blobs
    assert local_store.blob_path(Digest.of(b"nope"), executable=True) is None
    assert local_store.staging_files() == []


def test_iterators(local_store: LocalStore) -> None:
    blobs = {put_blob(local_store, bytes([i]) * i) for i in range(20)}
    dirs = {local_store.put_directory(sample_directory()), local_store.put_directory(Directory())}
    (local_store.root / "blobs" / "zz").mkdir()  # junk is ignored
    assert set(local_store.iter_blobs()) == blobs
    assert set(local_store.iter_directories()) == dirs


def _flip(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupt_blob_detected_at_eof(local_store: LocalStore) -> None:
    data = bytes(range(256)) * 5000
    digest = put_blob(local_store, data)
    path = local_store.blob_path(digest)
    assert path is not None
    _flip(path, 1000)
    f = local_store.open_blob(digest)
    assert f is not None
    with f:
        assert len(f.read(10)) == 10  # no verdict before EOF
        with pytest.raises(StoreError, match=f"blob {digest.hex} is corrupt"):
            f.read()
    with pytest.raises(StoreError, match=digest.hex) as info:
        read_blob(local_store, digest)
    assert info.value.reason == "corrupt"


def test_truncated_blob_detected(local_store: LocalStore) -> None:
    digest = put_blob(local_store, b"Hello World!")
    path = local_store.blob_path(digest)
    assert path is not None
    os.chmod(path, 0o644)
    path.write_bytes(b"Hello")
    with pytest.raises(StoreError, match=f"blob {digest.hex} is corrupt"):
        read_blob(local_store, digest)


def test_intact_blob_reads_in_chunks(local_store: LocalStore) -> None:
    data = os.urandom(3 << 20)
    digest = put_blob(local_store, data)
    f = local_store.open_blob(digest)
    assert f is not None
    with f:
        parts = iter(lambda: f.read(65536), b"")
        assert b"".join(parts) == data


def test_corrupt_directory_detected(local_store: LocalStore) -> None:
    digest = local_store.put_directory(sample_directory())
    path = local_store.root / "directories" / digest.hex[:2] / digest.hex
    _flip(path, 5)
    with pytest.raises(StoreError, match=f"directory {digest.hex} is corrupt") as info:
        local_store.get_directory(digest)
    assert info.value.reason == "corrupt"


def test_directory_swapped_for_another_is_detected(local_store: LocalStore) -> None:
    digest = local_store.put_directory(sample_directory())
    path = local_store.root / "directories" / digest.hex[:2] / digest.hex
    os.chmod(path, 0o644)
    path.write_bytes(Directory({b"x": SymlinkNode(b"y")}).encode())  # valid, wrong digest
    with pytest.raises(StoreError, match=digest.hex):
        local_store.get_directory(digest)


def test_undecodable_directory_with_matching_name(local_store: LocalStore) -> None:
    junk = b"\xff\xff\xff"
    digest = Digest.of(junk)
    path = local_store.root / "directories" / digest.hex[:2] / digest.hex
    path.parent.mkdir(parents=True)
    path.write_bytes(junk)
    with pytest.raises(StoreError, match=f"directory {digest.hex} is corrupt"):
        local_store.get_directory(digest)


def test_directory_node_sizes_survive(local_store: LocalStore) -> None:
    inner = Directory({b"f": FileNode(Digest.of(b""), 0)})
    outer = Directory({b"d": inner.node(), b"e": DirectoryNode(inner.digest, inner.size)})
    got = local_store.get_directory(local_store.put_directory(outer))
    assert got is not None and got.size == 2 * 2 + 2 * 2
