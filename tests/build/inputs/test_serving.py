"""Input providers (FUSE mount, hardlink materialization) against real mounts and real files."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from pytest_ocibuild.build.fuse_inputs import FuseInputs
from pytest_ocibuild.build.inputs import InputProvider, open_input_provider
from pytest_ocibuild.build.materialize import mount_at
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import BundleError, InvalidRequest
from tests.build.inputs.conftest import (
    BIG,
    SPEC,
    WRITE_ERRORS,
    Boom,
    assert_clean,
    force_unmount,
)
from tests.build.trees import Exec, Link, expected, put_node, put_tree, snapshot

# -- contents ----------------------------------------------------------------------------


def test_tree_helper_keeps_every_entry() -> None:
    want = expected(SPEC)
    assert {k.rstrip("/") for k in SPEC} <= set(want)
    assert want["lib/deep"] == ("dir", 0o555) and want["lib/deep/sibling"][2] == b"sib"
    assert len(want) == 17


def test_serves_the_same_tree(provider: InputProvider, store: Store, inputs_dir: Path) -> None:
    inputs = {
        "tree": put_tree(store, SPEC),
        "top-file": put_node(store, Exec(b"top")),
        "top-link": put_node(store, Link("tree/hello")),
    }
    with provider.provide(store, inputs, inputs_dir):
        assert sorted(os.listdir(inputs_dir)) == ["top-file", "top-link", "tree"]
        assert snapshot(inputs_dir / "tree") == expected(SPEC)
        assert (inputs_dir / "top-file").read_bytes() == b"top"
        assert stat.S_IMODE((inputs_dir / "top-file").stat().st_mode) == 0o555
        assert (inputs_dir / "top-link").read_bytes() == b"Hello World!\n"
        assert os.readlink(inputs_dir / "tree/dangling") == "/nix/store/nowhere"
        assert not (inputs_dir / "tree/dangling").exists()
        assert stat.S_IMODE((inputs_dir / "tree").stat().st_mode) == 0o555
        lib = (inputs_dir / "tree/lib").stat()
        assert lib.st_nlink == 3  # ., .. and deep/..
        big = (inputs_dir / "tree/big").stat()
        assert big.st_size == len(BIG)
        with open(inputs_dir / "tree/big", "rb") as f:  # random access
            f.seek(len(BIG) - 1000)
            assert f.read() == BIG[-1000:]
            f.seek(7)
            assert f.read(3) == BIG[7:10]
    assert_clean(inputs_dir)


def test_fuse_attributes_as_tvix(inputs_dir: Path) -> None:
    store = MemoryStore()
    with FuseInputs().provide(store, {"t": put_tree(store, SPEC)}, inputs_dir):
        for rel in ("t", "t/hello", "t/bin/tool", "t/lib/link", "t/empty-dir"):
            st = os.lstat(inputs_dir / rel)
            assert (st.st_uid, st.st_gid, st.st_mtime) == (0, 0, 1.0), rel
        root = os.stat(inputs_dir)
        assert stat.S_IMODE(root.st_mode) == 0o555
        assert root.st_nlink == 3
        assert os.stat(inputs_dir / "t/hello").st_nlink == 1
        assert os.stat(inputs_dir / "t/empty-dir").st_nlink == 2
        entry = mount_at(inputs_dir)
        assert entry is not None and entry[0] == "fuse.ocibuild"


def test_executables_run_from_inputs(provider: InputProvider, inputs_dir: Path) -> None:
    echo = shutil.which("echo")
    assert echo
    store = MemoryStore()
    inputs = {"bin": put_tree(store, {"echo": Exec(Path(echo).read_bytes())})}
    with provider.provide(store, inputs, inputs_dir):
        out = subprocess.run([inputs_dir / "bin/echo", "ok"], capture_output=True, check=True)
        assert out.stdout == b"ok\n"
    assert_clean(inputs_dir)


def test_another_user_can_read(provider: InputProvider) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    base = Path(tempfile.mkdtemp(prefix="ocibuild-inputs-"))
    try:
        base.chmod(0o755)
        at = base / "inputs"
        at.mkdir()
        store = MemoryStore()
        inputs = {
            "t": put_tree(store, {"d/f": b"shared\n", "x": Exec(Path("/bin/true").read_bytes())})
        }
        with provider.provide(store, inputs, at):
            cmd = f"cat {at}/t/d/f && ls {at}/t && {at}/t/x && ! touch {at}/t/new"
            out = subprocess.run(
                ["sh", "-c", cmd], user=65534, group=65534, capture_output=True, check=False
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout == b"shared\nd\nx\n"
        assert_clean(at)
    finally:
        force_unmount(base / "inputs")
        shutil.rmtree(base)


# -- read-only ---------------------------------------------------------------------------


def test_inputs_are_read_only(provider: InputProvider, store: Store, inputs_dir: Path) -> None:
    if getattr(provider, "readonly_mount", True) is False:
        pytest.skip("without root, materialized inputs are the caller's own files (not "
                    "remounted read-only: their 0444/0555 modes protect them from the build's "
                    "subordinate uid: tests/hostile/test_containment.py attacks them from a build)")
    tree = put_tree(store, {"f": b"original", "d/g": b"x", "x": Exec(b"run")})
    with provider.provide(store, {"t": tree}, inputs_dir):
        t = inputs_dir / "t"
        attempts = {
            "write": lambda: open(t / "f", "r+b").write(b"changed"),  # noqa: SIM115
            "truncate": lambda: os.truncate(t / "f", 0),
            "create": lambda: open(t / "d/new", "wb").close(),
            "create-top": lambda: open(inputs_dir / "new", "wb").close(),
            "unlink": lambda: os.unlink(t / "d/g"),
            "rmdir": lambda: os.rmdir(t / "d"),
            "mkdir": lambda: os.mkdir(t / "new-dir"),
            "rename": lambda: os.rename(t / "f", t / "f2"),
            "chmod": lambda: os.chmod(t / "f", 0o666),
            "chmod-dir": lambda: os.chmod(t / "d", 0o777),
            "symlink": lambda: os.symlink("f", t / "s"),
            "utime": lambda: os.utime(t / "f", (5, 5)),
        }
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno in WRITE_ERRORS, (what, info.value)
        assert (t / "f").read_bytes() == b"original"
        assert sorted(os.listdir(t)) == ["d", "f", "x"]
    assert_clean(inputs_dir)
    # the store's own copy (a hardlink target for materialize) is intact
    assert tree.digest and snapshot_store_file(store, tree, b"f") == b"original"


def snapshot_store_file(store: Store, tree: DirectoryNode, name: bytes) -> bytes:
    directory = store.get_directory(tree.digest)
    assert directory is not None
    node = directory.entries[name]
    assert isinstance(node, FileNode)
    f = store.open_blob(node.digest)
    assert f is not None
    with f:
        return f.read()


# -- cleanup -----------------------------------------------------------------------------



@pytest.mark.parametrize("ending", ["normal", "exception", "keyboard-interrupt", "open-file"])
def test_cleanup(provider: InputProvider, store: Store, inputs_dir: Path, ending: str) -> None:
    if isinstance(provider, FuseInputs):
        provider.stop_timeout = 0.5  # the open-file case waits for it
    tree = put_tree(store, {"a/b/c": b"x", "d": Exec(b"y"), "e/": {}})
    raised: type[BaseException] | None = {
        "exception": Boom,
        "keyboard-interrupt": KeyboardInterrupt,
    }.get(ending)
    held = None
    try:
        with provider.provide(store, {"t": tree, "u": tree}, inputs_dir):
            assert (inputs_dir / "t/a/b/c").read_bytes() == b"x"
            if ending == "open-file":
                held = open(inputs_dir / "u/a/b/c", "rb")  # noqa: SIM115
                os.chdir(inputs_dir / "t/a")
            if raised is not None:
                raise raised()
    except (Boom, KeyboardInterrupt) as e:
        assert type(e) is raised
    else:
        assert raised is None
    finally:
        os.chdir("/")
        if held is not None:
            held.close()
    assert_clean(inputs_dir)


def test_not_empty_target_is_refused(provider: InputProvider, inputs_dir: Path) -> None:
    (inputs_dir / "stray").write_text("x")
    store = MemoryStore()
    with (
        pytest.raises(BundleError, match="not empty"),
        provider.provide(store, {"t": put_tree(store, {"a": b"1"})}, inputs_dir),
    ):
        pass
    assert os.listdir(inputs_dir) == ["stray"]


def test_unknown_provider() -> None:
    with pytest.raises(InvalidRequest):
        open_input_provider("nfs")
