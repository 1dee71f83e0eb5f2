"""Durability without fsync and O_DIRECT writes (LocalStore internals)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_ocibuild.castore import local
from pytest_ocibuild.castore.digest import EMPTY, Digest
from pytest_ocibuild.castore.direct import ALIGN, BUFFER, DirectWriter, open_direct
from pytest_ocibuild.castore.ingest import SMALL, _read_small, ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nodes import Directory, FileNode
from pytest_ocibuild.castore.store import put_blob, read_blob

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, (64 << 10) + 7, BUFFER - 1, BUFFER, BUFFER + 1,
         3 * BUFFER + 123]


def test_fsync_default_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCIBUILD_FSYNC", raising=False)
    assert LocalStore(tmp_path / "a").fsync is False
    monkeypatch.setenv("OCIBUILD_FSYNC", "1")
    assert LocalStore(tmp_path / "b").fsync is True
    assert LocalStore(tmp_path / "c", fsync=False).fsync is False
    monkeypatch.setenv("OCIBUILD_FSYNC", "0")
    assert LocalStore(tmp_path / "d").fsync is False


def test_direct_default_follows_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OCIBUILD_DIRECT", raising=False)
    assert LocalStore(tmp_path / "a")._direct is False
    monkeypatch.setenv("OCIBUILD_DIRECT", "1")
    assert LocalStore(tmp_path / "b")._direct is True
    assert LocalStore(tmp_path / "c", direct=False)._direct is False


def _power_loss(path: Path, keep: int = 0) -> None:
    """What a power loss can leave of an unsynced object: its name with a short file."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(keep)


@pytest.mark.parametrize("size", [12, 200 << 10, 3 << 20])
def test_truncated_blob_is_rewritten(tmp_path: Path, size: int) -> None:
    store = LocalStore(tmp_path / "s")
    data = os.urandom(size)
    digest = put_blob(store, data)
    path = store.blob_path(digest)
    assert path is not None
    _power_loss(path, keep=size // 2)
    assert store.has_blob(digest) and not store.has_blob(digest, size)
    assert put_blob(store, data) == digest  # the writer does not trust the short file
    assert store.has_blob(digest, size) and read_blob(store, digest) == data
    assert path.stat().st_mode & 0o777 == 0o444


def test_empty_file_is_not_a_blob_unless_it_is_the_empty_blob(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    digest = put_blob(store, b"Hello World!")
    path = store.blob_path(digest)
    assert path is not None
    _power_loss(path)
    assert not store.has_blob(digest) and store.blob_path(digest) is None
    assert put_blob(store, b"") == EMPTY
    assert store.has_blob(EMPTY) and store.has_blob(EMPTY, 0)


def test_ingest_rewrites_truncated_blobs_and_directories(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "small").write_bytes(b"small file\n")
    (tree / "big").write_bytes(os.urandom(2 * SMALL + 5))
    store = LocalStore(tmp_path / "s")
    root = ingest_path(store, tree)
    loose = [p for p in (tmp_path / "s").glob("[bd]*/*/*") if p.is_file()]
    packs = list((tmp_path / "s" / "packs").glob("*.pack"))
    assert loose and packs  # the big blob is a file; the small one and directories packed
    for path in loose + packs:
        _power_loss(path)
    store = LocalStore(tmp_path / "s")  # the next process after the power loss
    assert not store.has_blob(Digest.of(b"small file\n"))
    assert ingest_path(store, tree) == root
    for digest in store.iter_blobs():
        assert read_blob(store, digest) is not None  # verified
    for digest in store.iter_directories():
        assert store.get_directory(digest) is not None  # verified


def test_memory_store_has_blob_size() -> None:
    store = MemoryStore()
    digest = put_blob(store, b"four")
    assert store.has_blob(digest) and store.has_blob(digest, 4) and not store.has_blob(digest, 3)


@pytest.mark.parametrize("where", ["disk", "shm"])
def test_direct_writer_sizes(tmp_path: Path, where: str) -> None:
    base = tmp_path if where == "disk" else Path("/dev/shm")
    if not os.access(base, os.W_OK):
        base = tmp_path
    for size in SIZES:
        data = os.urandom(size)
        path = str(base / f"ocibuild-direct-test-{os.getpid()}-{size}")
        fd, direct = open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            out = DirectWriter(fd, direct)
            for off in range(0, size, 300_007):  # odd-sized pieces cross every boundary
                out.write(data[off : off + 300_007])
            out.close()
            out.release()  # idempotent
        finally:
            os.close(fd)
        try:
            assert Path(path).read_bytes() == data, size
        finally:
            os.unlink(path)


def test_direct_writer_on_buffered_fd_still_writes(tmp_path: Path) -> None:
    """A writer told ``direct`` on a buffered fd must still produce the exact bytes."""
    data = os.urandom(BUFFER + ALIGN + 3)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    out = DirectWriter(fd, True)
    out.write(data)
    out.close()
    os.close(fd)
    assert path.read_bytes() == data


def test_read_small_notices_growth(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_small(fd, 10) == b"x" * 100  # grew after the stat: read to the end
        path.write_bytes(b"y" * (SMALL + 1))
        os.lseek(fd, 0, os.SEEK_SET)
        assert _read_small(fd, 10) is None  # no longer small: the caller streams it
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [SMALL - 1, SMALL, SMALL + 1])
def test_ingest_at_small_boundary(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    store = LocalStore(tmp_path / "s")
    node = ingest_path(store, tmp_path / "f")
    assert node == FileNode(Digest.of(data), size)
    assert read_blob(store, node.digest) == data


@pytest.mark.parametrize("first", [None, "tmp", "blobs"])
def test_new_store_layout_is_complete(tmp_path: Path, first: str | None) -> None:
    root = tmp_path / "new" / "store"
    if first:  # e.g. the result store made the shared tmp/ first
        (root / first).mkdir(parents=True)
    store = LocalStore(root)
    for sub in ("blobs", "directories", "packs", "tmp"):
        assert (root / sub).is_dir()
    assert store.put_directory(Directory({})) == EMPTY
    assert put_blob(store, b"x" * 100_000) == Digest.of(b"x" * 100_000)


def test_unnamed_staging_with_o_direct(tmp_path: Path) -> None:
    """O_TMPFILE staging files take O_DIRECT writes where the filesystem does (ext4 here)."""
    store = LocalStore(tmp_path / "s", direct=True)
    data = os.urandom(3 * BUFFER + 5)
    w = store.blob_writer()
    w.write(data)
    assert store.staging_files() == []  # in flight, yet nothing named in tmp/
    digest = w.commit()
    assert read_blob(store, digest) == data
    assert store.tmpfile == hasattr(os, "O_TMPFILE")
    fd, direct = open_direct(str(tmp_path), os.O_TMPFILE | os.O_WRONLY, 0o600)
    os.close(fd)
    assert store._direct == direct


def test_refused_o_tmpfile_falls_back_to_named_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel refusal of O_TMPFILE (here EINVAL: O_TMPFILE without write access) switches
    the store to named staging files, and the object is still stored."""
    monkeypatch.setattr(local, "_TMPFILE_FLAGS", os.O_TMPFILE | os.O_RDONLY)
    store = LocalStore(tmp_path / "s")
    assert store.tmpfile
    for data in (b"small", os.urandom(200_000)):
        assert read_blob(store, put_blob(store, data)) == data
        assert not store.tmpfile
    w = store.blob_writer()
    w.write(os.urandom(3 << 20))
    assert len(store.staging_files()) == 1  # named, so purge can find a killed writer's
    w.abort()
    assert store.staging_files() == []


@pytest.mark.parametrize("tmpfile", [True, False])
def test_publish_over_truncated_object_repairs_it(tmp_path: Path, tmpfile: bool) -> None:
    """A writer that finds a truncated object under its name at link time replaces it."""
    store = LocalStore(tmp_path / "s", tmpfile=tmpfile)
    data = os.urandom(3 << 20)
    digest = Digest.of(data)
    w = store.blob_writer()
    w.write(data)
    path = store.blob_path(digest)
    assert path is None
    target = tmp_path / "s" / "blobs" / digest.hex[:2] / digest.hex
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[:100])  # what a power loss may leave
    assert w.commit() == digest
    assert read_blob(store, digest) == data
    assert store.staging_files() == []
