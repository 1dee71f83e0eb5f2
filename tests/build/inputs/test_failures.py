"""Input providers when things go wrong or get busy: missing objects, concurrency, laziness,
materialize specifics, a dying server or caller."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pytest_ocibuild.build.fuse_inputs import FuseInputs, check_fuse
from pytest_ocibuild.build.inputs import InputProvider
from pytest_ocibuild.build.materialize import MaterializeInputs, mount_at
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import BundleError, RuntimeUnavailable, StoreError
from tests.build.inputs.conftest import (
    Boom,
    assert_clean,
    force_unmount,
)
from tests.build.trees import Exec, Link, expected, put_node, put_tree, snapshot

# -- missing objects ----------------------------------------------------------------------

MISSING = Digest.of(b"never stored")


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_missing_top_level_input(
    provider: InputProvider, store: Store, inputs_dir: Path, kind: str
) -> None:
    node: Node = DirectoryNode(MISSING, 2) if kind == "directory" else FileNode(MISSING, 12)
    ok = put_tree(store, {"a": b"1"})
    with (
        pytest.raises(StoreError, match=MISSING.hex),
        provider.provide(store, {"ok": ok, "gone": node}, inputs_dir),
    ):
        pytest.fail("entered despite a missing input")
    assert_clean(inputs_dir)


MISSING_DIR = Digest.of(b"no dir")


def tree_with_holes(store: Store, holes: tuple[str, ...] = ("file", "dir")) -> DirectoryNode:
    """A tree whose ``lost-file`` blob and ``lost-dir`` directory are not in the store."""
    entries: dict[bytes, Node] = {b"fine": put_node(store, b"fine")}
    if "file" in holes:
        entries[b"lost-file"] = FileNode(MISSING, 5)
    if "dir" in holes:
        entries[b"lost-dir"] = DirectoryNode(MISSING_DIR, 2)
    directory = Directory(entries)
    store.put_directory(directory)
    return directory.node()


@pytest.mark.parametrize("hole", ["file", "dir"])
def test_materialize_missing_nested_object(store: Store, inputs_dir: Path, hole: str) -> None:
    missing = MISSING if hole == "file" else MISSING_DIR
    with (
        pytest.raises(StoreError, match=f"/t/lost-{hole}: .*{missing.hex}"),
        MaterializeInputs().provide(store, {"t": tree_with_holes(store, (hole,))}, inputs_dir),
    ):
        pytest.fail("entered despite a missing blob")
    assert_clean(inputs_dir)


def test_fuse_missing_nested_objects_give_eio(store: Store, inputs_dir: Path) -> None:
    """Decision: EIO for the syscall that needs the object, then StoreError when leaving."""
    with (
        pytest.raises(StoreError) as info,
        FuseInputs().provide(store, {"t": tree_with_holes(store)}, inputs_dir),
    ):
        t = inputs_dir / "t"
        assert (t / "fine").read_bytes() == b"fine"
        assert sorted(os.listdir(t)) == ["fine", "lost-dir", "lost-file"]
        with pytest.raises(OSError) as read_error:
            (t / "lost-file").read_bytes()
        assert read_error.value.errno == errno.EIO
        with pytest.raises(OSError) as list_error:
            os.listdir(t / "lost-dir")
        assert list_error.value.errno == errno.EIO
    assert MISSING.hex in str(info.value) and MISSING_DIR.hex in str(info.value)
    assert "/t/lost-file" in str(info.value) and "/t/lost-dir" in str(info.value)
    assert_clean(inputs_dir)


def test_fuse_missing_object_note_when_block_raised(inputs_dir: Path) -> None:
    store = MemoryStore()
    with (
        pytest.raises(Boom) as info,
        FuseInputs().provide(store, {"t": tree_with_holes(store)}, inputs_dir),
    ):
        with pytest.raises(OSError):
            (inputs_dir / "t/lost-file").read_bytes()
        raise Boom()
    assert any(MISSING.hex in note for note in info.value.__notes__)
    assert_clean(inputs_dir)


# -- concurrency and laziness --------------------------------------------------------------


def test_two_mounts_at_once(store: Store, tmp_path: Path, inputs_dir: Path) -> None:
    first, second = inputs_dir / "one", inputs_dir / "two"
    first.mkdir()
    second.mkdir()
    a = put_tree(store, {"f": b"A" * 100_000, "d/x": b"ax"})
    b = put_tree(store, {"f": b"B" * 100_000, "d/x": b"bx"})
    one = FuseInputs().provide(store, {"t": a}, first)
    two = FuseInputs().provide(store, {"t": b}, second)
    one.__enter__()
    one_open = True
    try:
        two.__enter__()
        try:
            errors: list[BaseException] = []

            def reader(at: Path, byte: bytes) -> None:
                try:
                    for _ in range(20):
                        assert (at / "t/f").read_bytes() == byte * 100_000
                except BaseException as e:
                    errors.append(e)

            threads = [
                threading.Thread(target=reader, args=args)
                for args in [(first, b"A"), (second, b"B"), (first, b"A"), (second, b"B")]
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert errors == []
            assert (second / "t/d/x").read_bytes() == b"bx"
            one_open = False
            one.__exit__(None, None, None)  # not in LIFO order
            assert mount_at(first) is None
            assert (second / "t/d/x").read_bytes() == b"bx"
        finally:
            two.__exit__(None, None, None)
    finally:
        if one_open:
            one.__exit__(None, None, None)
    assert_clean(first)
    assert_clean(second)


class CountingStore(MemoryStore):
    """Logs every get_directory digest to a file (the FUSE server is another process)."""

    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = log

    def get_directory(self, digest: Digest) -> Directory | None:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, digest.hex.encode() + b"\n")
        finally:
            os.close(fd)
        return super().get_directory(digest)

    def fetched(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


def test_fuse_fetches_only_looked_up_directories(tmp_path: Path, inputs_dir: Path) -> None:
    store = CountingStore(tmp_path / "fetches")
    spec = {"a/b/c/file": b"deep", "a/other/x/y": b"no", "z/w/v": b"no"}
    root = put_tree(store, spec)
    dirs = {}
    for rel in ("", "a", "a/b", "a/b/c", "a/other", "a/other/x", "z", "z/w"):
        sub = (
            {k[len(rel) + 1 :]: v for k, v in spec.items() if k.startswith(rel + "/")}
            if rel
            else spec
        )
        dirs[rel] = put_tree(MemoryStore(), sub).digest.hex
    assert store.fetched() == []
    with FuseInputs().provide(store, {"t": root}, inputs_dir):
        assert store.fetched() == [dirs[""]]  # only the top-level input, checked before mounting
        assert (inputs_dir / "t/a/b/c/file").read_bytes() == b"deep"
        assert (inputs_dir / "t/a/b/c/file").read_bytes() == b"deep"
        fetched = store.fetched()
    assert sorted(fetched) == sorted(dirs[k] for k in ("", "a", "a/b", "a/b/c"))
    assert len(fetched) == len(set(fetched)), "a directory was fetched twice"


def test_fuse_unavailable_without_dev_fuse(
    monkeypatch: pytest.MonkeyPatch, inputs_dir: Path
) -> None:
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/dev/fuse" and real(p))
    store = MemoryStore()
    with (
        pytest.raises(RuntimeUnavailable, match="/dev/fuse"),
        FuseInputs().provide(store, {"t": put_tree(store, {"a": b"1"})}, inputs_dir),
    ):
        pass


def test_fuse_unavailable_without_fusermount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeUnavailable, match="install fuse3"):
        check_fuse()


# -- materialize specifics ------------------------------------------------------------------


def test_materialize_hardlinks_store_blobs(tmp_path: Path, inputs_dir: Path) -> None:
    store = LocalStore(tmp_path / "store", fsync=False)
    provider = MaterializeInputs()
    tree = put_tree(store, {"f": b"data", "x": Exec(b"exe"), "d/g": b"data"})
    with provider.provide(store, {"t": tree}, inputs_dir):
        f, x, g = (os.stat(inputs_dir / "t" / p) for p in ("f", "x", "d/g"))
        blob = store.blob_path(Digest.of(b"data"))
        twin = store.blob_path(Digest.of(b"exe"), executable=True)
        assert blob and twin
        assert f.st_ino == g.st_ino == os.stat(blob).st_ino
        assert x.st_ino == os.stat(twin).st_ino
        assert stat.S_IMODE(x.st_mode) == 0o555
        assert (provider.linked, provider.copied) == (3, 0)
    assert_clean(inputs_dir)
    assert os.stat(blob).st_nlink == 1  # our links are gone, the blob stays


def test_materialize_copies_across_filesystems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    store = LocalStore(tmp_path / "store", fsync=False)
    at = Path(tempfile.mkdtemp(dir=shm))
    try:
        provider = MaterializeInputs()
        spec = {"f": b"data", "x": Exec(b"exe"), "l": Link("f")}
        with provider.provide(store, {"t": put_tree(store, spec)}, at):
            assert snapshot(at / "t") == expected(spec)
            assert (provider.linked, provider.copied) == (0, 2)
        assert_clean(at)
    finally:
        force_unmount(at)
        shutil.rmtree(at)


def test_materialize_streams_from_stores_without_blob_files(inputs_dir: Path) -> None:
    store = MemoryStore()
    provider = MaterializeInputs()
    with provider.provide(store, {"t": put_tree(store, {"f": b"1", "g": Exec(b"2")})}, inputs_dir):
        assert (provider.linked, provider.copied) == (0, 2)
    assert_clean(inputs_dir)


# -- a dying server or caller ----------------------------------------------------------------


def child_pids() -> set[int]:
    me, found = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat_line.rsplit(")", 1)[1].split()[1] == me:
                found.add(int(entry))
    return found


def test_fuse_server_crash_is_cleaned_up_and_reported(inputs_dir: Path) -> None:
    store = MemoryStore()
    before = child_pids()
    with (
        pytest.raises(BundleError, match=r"exited early .*signal 9"),
        FuseInputs().provide(store, {"t": put_tree(store, {"f": b"x"})}, inputs_dir),
    ):
        (server,) = child_pids() - before
        os.kill(server, signal.SIGKILL)
        time.sleep(0.1)
        with pytest.raises(OSError) as info:
            (inputs_dir / "t/f").read_bytes()
        assert info.value.errno == errno.ENOTCONN
    assert_clean(inputs_dir)
    assert child_pids() == before


def test_fuse_mount_goes_away_when_the_caller_is_killed(inputs_dir: Path) -> None:
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from pathlib import Path
from pytest_ocibuild.build.fuse_inputs import FuseInputs
from pytest_ocibuild.castore.memory import MemoryStore
from tests.build.trees import put_tree
store = MemoryStore()
at = Path({str(inputs_dir)!r})
with FuseInputs().provide(store, {{"t": put_tree(store, {{"f": b"x"}})}}, at):
    print("ready", flush=True)
    time.sleep(60)
"""
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline() == b"ready\n"
        assert (inputs_dir / "t/f").read_bytes() == b"x"
        caller.kill()  # no cleanup code runs in the caller
        caller.wait()
        deadline = time.monotonic() + 10
        while mount_at(inputs_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mount_at(inputs_dir) is None, "the FUSE server outlived its caller"
    finally:
        caller.kill()
        caller.wait()


def test_packed_inputs_are_served_from_their_packs(
    provider: InputProvider, tmp_path: Path, inputs_dir: Path
) -> None:
    """An ingested tree's small files live in a pack: FUSE reads them from it; materialize
    unpacks each into a blob file once (to hardlink it) and then reuses it."""
    from pytest_ocibuild.castore.ingest import ingest_path

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"packed a\n")
    (src / "sub" / "b.txt").write_bytes(b"packed b\n")
    store = LocalStore(tmp_path / "s")
    tree = ingest_path(store, src)
    blobs = store.root / "blobs"
    assert not [p for p in blobs.rglob("*") if p.is_file()]  # everything is packed
    for _ in range(2):
        with provider.provide(store, {"t": tree}, inputs_dir):
            assert (inputs_dir / "t" / "a.txt").read_bytes() == b"packed a\n"
            assert (inputs_dir / "t" / "sub" / "b.txt").read_bytes() == b"packed b\n"
        assert_clean(inputs_dir)
    loose = sorted(p.name for p in blobs.rglob("*") if p.is_file())
    if isinstance(provider, FuseInputs):
        assert loose == []
    else:
        assert loose == sorted(Digest.of(d).hex for d in (b"packed a\n", b"packed b\n"))
