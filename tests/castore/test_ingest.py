"""ingest_path / export / walk / tree_dict round trips and refusals."""

from __future__ import annotations

import os
import socket
import stat
import sys
import tracemalloc
from pathlib import Path

import blake3
import pytest

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.ingest import INLINE, ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.castore.store import Store, put_blob, read_blob
from pytest_ocibuild.castore.trees import export, tree_dict, walk
from pytest_ocibuild.errors import NotFound, StoreError

from .conftest import make_tree


def disk_tree(root: Path) -> dict[str, tuple]:
    """Describe a real directory the way tree_dict describes a stored one."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out["" if rel == "." else rel] = ("dir",)
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            key = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[key] = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                data = Path(p).read_bytes()
                out[key] = ("file", Digest.of(data).hex, len(data), bool(st.st_mode & 0o100))
    return out


def test_ingest_matches_disk(store: Store, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    node = ingest_path(store, root)
    assert isinstance(node, DirectoryNode)
    got = tree_dict(store, node)
    assert got == disk_tree(root)
    assert got["run.sh"][3] is True and got["owner-x-only"][3] is True
    assert got["group-x-only"][3] is False
    assert got["dangling"] == ("symlink", "does/not/exist")
    assert got["abs-link"] == ("symlink", "/nix/store/somewhereelse")
    assert got["empty"] == ("file", Digest.of(b"").hex, 0, False)
    assert got["empty-dir"] == ("dir",)
    for _, n in walk(store, node):
        if isinstance(n, FileNode):
            assert store.has_blob(n.digest)


def test_ingest_is_deterministic_across_backends(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    a = ingest_path(MemoryStore(), root)
    b = ingest_path(LocalStore(tmp_path / "s"), root)
    assert a == b
    os.utime(root / "hello", (1, 1))  # metadata other than the x bit does not matter
    os.chmod(root / "hello", 0o600)
    assert ingest_path(MemoryStore(), root) == a
    os.chmod(root / "hello", 0o700)
    assert ingest_path(MemoryStore(), root) != a


def test_root_digest_matches_hand_encoding(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "a").write_bytes(b"x")
    (root / "b").write_bytes(b"")
    os.chmod(root / "b", 0o755)
    os.symlink("a", root / "l")

    def field(num: int, payload: bytes) -> bytes:
        assert len(payload) < 128
        return bytes([num << 3 | 2, len(payload)]) + payload

    empty_dir = bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
    encoded = (
        field(1, field(1, b"d") + field(2, empty_dir))  # size 0: omitted
        + field(2, field(1, b"a") + field(2, blake3.blake3(b"x").digest()) + b"\x18\x01")
        + field(2, field(1, b"b") + field(2, blake3.blake3(b"").digest()) + b"\x20\x01")
        + field(3, field(1, b"l") + field(2, b"a"))
    )
    node = ingest_path(store, root)
    assert node == DirectoryNode(Digest(blake3.blake3(encoded).digest()), 2 * 4)
    stored = store.get_directory(node.digest)
    assert stored is not None and stored.encode() == encoded


def test_roundtrip_export(store: Store, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    node = ingest_path(store, root)
    out = tmp_path / "out" / "nested"
    export(store, node, out)
    assert disk_tree(out) == disk_tree(root)
    assert ingest_path(store, out) == node
    for dirpath, dirnames, filenames in os.walk(out):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o755
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                assert stat.S_IMODE(st.st_mode) in (0o644, 0o755)
        del dirnames


def test_export_sets_modes_despite_umask(tmp_path: Path) -> None:
    store = MemoryStore()
    root = make_tree(tmp_path / "t")
    node = ingest_path(store, root)
    old = os.umask(0o077)
    try:
        export(store, node, tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "hello").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "a").st_mode) == 0o755


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling"])
def test_single_node_roots(store: Store, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    if kind == "file":
        src.write_bytes(b"Hello World!")
        os.chmod(src, 0o755)
    else:
        os.symlink("/etc/hostname" if kind == "symlink" else "nowhere", src)
    node = ingest_path(store, src)
    if kind == "file":
        assert node == FileNode(Digest.of(b"Hello World!"), 12, executable=True)
    else:
        assert node == SymlinkNode(os.fsencode(os.readlink(src)))  # never followed
    assert list(walk(store, node)) == [(b"", node)]
    export(store, node, tmp_path / "dst")
    assert ingest_path(store, tmp_path / "dst") == node


def test_walk_order_and_prefix(store: Store, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    node = ingest_path(store, root)
    paths = [p for p, _ in walk(store, node, prefix=b"top")]
    assert paths[0] == b"top"
    assert all(p.startswith(b"top/") for p in paths[1:])
    top_level = [p for p in paths if p.count(b"/") == 1]
    assert top_level == sorted(top_level)
    assert paths.index(b"top/a") < paths.index(b"top/a/b/c/leaf.txt") < paths.index(b"top/a0")


def test_export_refuses_existing_destination(store: Store, tmp_path: Path) -> None:
    node = ingest_path(store, make_tree(tmp_path / "t"))
    for existing in ("file", "dir", "link"):
        dest = tmp_path / existing
        if existing == "file":
            dest.write_bytes(b"keep me")
        elif existing == "dir":
            dest.mkdir()
        else:
            os.symlink("missing", dest)
        with pytest.raises(StoreError, match="already exists, refusing to overwrite"):
            export(store, node, dest)
    assert (tmp_path / "file").read_bytes() == b"keep me"


def test_export_failure_leaves_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    missing = FileNode(Digest.of(b"not stored"), 10)
    directory = Directory({b"a": FileNode(put_blob(store, b""), 0), b"z": missing})
    node = DirectoryNode(store.put_directory(directory), directory.size)
    with pytest.raises(NotFound, match=Digest.of(b"not stored").hex):
        export(store, node, tmp_path / "out")
    assert not os.path.lexists(tmp_path / "out")
    with pytest.raises(NotFound, match="directory"):
        export(store, DirectoryNode(Digest.of(b"nope"), 0), tmp_path / "out")
    assert not os.path.lexists(tmp_path / "out")


def test_export_detects_corrupt_blob(local_store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"precious" * 1000)
    node = ingest_path(local_store, src)
    assert isinstance(node, FileNode)
    path = local_store.blob_path(node.digest)
    assert path is not None
    os.chmod(path, 0o644)
    path.write_bytes(b"Precious" + b"precious" * 999)
    with pytest.raises(StoreError, match=f"blob {node.digest.hex} is corrupt"):
        export(local_store, node, tmp_path / "out")
    assert not os.path.lexists(tmp_path / "out")


def test_large_file_streams_in_constant_memory(local_store: LocalStore, tmp_path: Path) -> None:
    size = 50 << 20
    src = tmp_path / "big"
    h = blake3.blake3()
    block = bytes(range(256)) * 4096 + b"\x01"  # odd length: chunks never align
    with open(src, "wb") as f:
        written = 0
        while written < size:
            piece = block[: size - written]
            f.write(piece)
            h.update(piece)
            written += len(piece)
    tracemalloc.start()
    try:
        node = ingest_path(local_store, src)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        export(local_store, node, tmp_path / "copy")
        _, export_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert node == FileNode(Digest(h.digest()), size)
    assert peak < 16 << 20, f"ingest peak {peak / 2**20:.1f} MiB"
    assert export_peak < 16 << 20, f"export peak {export_peak / 2**20:.1f} MiB"
    assert os.path.getsize(tmp_path / "copy") == size
    assert ingest_path(MemoryStore(), tmp_path / "copy") == node


def test_fifo_refused(store: Store, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    fifo = root / "a" / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="only files, directories and symlinks") as info:
        ingest_path(store, root)
    assert str(info.value) == (
        f"{fifo}: is a fifo, only files, directories and symlinks can be ingested"
    )
    assert info.value.reason == "unsupported-file-type"
    with pytest.raises(StoreError, match=f"{fifo}: is a fifo"):
        ingest_path(store, fifo)


def test_socket_refused(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        with pytest.raises(StoreError, match=f"{root / 'sock'}: is a socket"):
            ingest_path(store, root)
    finally:
        sock.close()


def test_device_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="/dev/null: is a character device"):
        ingest_path(store, Path("/dev/null"))


def test_missing_path(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nothing-here: cannot ingest"):
        ingest_path(store, tmp_path / "nothing-here")


def test_blob_contents_are_file_contents(store: Store, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    node = ingest_path(store, root)
    for path, n in walk(store, node):
        if isinstance(n, FileNode):
            assert read_blob(store, n.digest) == (root / os.fsdecode(path)).read_bytes()


def test_deep_tree_has_no_recursion_limit(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "deep"
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(300):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)  # shallower than the tree: recursion would fail
    try:
        node = ingest_path(store, root)
        paths = [p for p, _ in walk(store, node)]
    finally:
        sys.setrecursionlimit(limit)
    assert len(paths) == 302
    assert paths[-1].endswith(b"d/f")


def test_worker_count_does_not_change_result(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    for i in range(200):
        (root / "a" / f"many{i}").write_bytes(os.urandom(i * 37))
    (root / "a" / "big").write_bytes(os.urandom(3 << 20))  # streamed, not read whole
    nodes = {ingest_path(MemoryStore(), root, workers=w) for w in (1, 2, 16)}
    nodes |= {ingest_path(LocalStore(tmp_path / f"s{w}"), root, workers=w) for w in (1, 4)}
    assert len(nodes) == 1


def test_store_failure_in_worker_propagates(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    store = LocalStore(tmp_path / "s")
    os.rmdir(tmp_path / "s" / "tmp")  # every staging file creation now fails
    with pytest.raises(StoreError, match="cannot create staging file"):
        ingest_path(store, root, workers=4)
    assert not any((tmp_path / "s" / "directories").iterdir())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_large_files_started_ahead_give_the_same_tree(tmp_path: Path) -> None:
    """Many files of at least INLINE bytes in several directories: the prefetcher starts them
    on the pool ahead of the walk; the result equals an inline ingest and leaks no fd."""
    root = tmp_path / "t"
    for d in range(6):
        sub = root / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for i in range(12):
            (sub.parent / f"large{i}").write_bytes(os.urandom(INLINE + 1000 * i))
            (sub / f"small{i}").write_bytes(os.urandom(100 * i))
    expected = ingest_path(MemoryStore(), root, workers=1)
    fds = _open_fds()
    for workers in (2, 4):
        store = LocalStore(tmp_path / f"s{workers}")
        assert ingest_path(store, root, workers=workers) == expected
        assert tree_dict(LocalStore(tmp_path / f"s{workers}"), expected) == tree_dict(
            store, expected)
    assert _open_fds() == fds


def test_failure_among_large_files_leaves_no_fd_or_pack(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for i in range(40):
        (root / f"large{i:02d}").write_bytes(os.urandom(INLINE + i))
    os.mkfifo(root / "large20-fifo")
    store = LocalStore(tmp_path / "s")
    fds = _open_fds()
    with pytest.raises(StoreError, match="large20-fifo: is a fifo"):
        ingest_path(store, root, workers=2)
    assert _open_fds() == fds
    assert not any((tmp_path / "s" / "packs").iterdir())
