"""Nixery's race, reproduced: many xdist workers put the same objects into one store at once.

Nixery's layer cache failed when two uploads of one key raced (``rename staging/<hash>: no such
file or directory``). Here four workers start together (a file barrier), then each writes the
same blobs -- small and multi-megabyte -- and the same directories, many times, and builds the
same request. The outer test checks that every worker succeeded, that every object in the
store reads back with the right digest, that no staging file is left behind, and that the
identical builds produced identical outputs.
"""

from __future__ import annotations

import pytest

from pytest_ocibuild.castore.local import LocalStore

pytestmark = pytest.mark.usefixtures("needs_runc")

WORKERS = 4
INNER = """
import time
from pathlib import Path

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, FileNode
from pytest_ocibuild.castore.store import put_blob

WORKERS = %(workers)d
BLOBS = [bytes([i]) * (i * 7919 %% 65536) for i in range(48)] + [b"big" * 1_500_000]


def barrier(root: Path, name: str, worker_id: str) -> None:
    (root / f"{name}.{worker_id}").touch()
    deadline = time.monotonic() + 120
    while len(list(root.glob(f"{name}.*"))) < WORKERS:
        assert time.monotonic() < deadline, f"only some workers reached {name}"
        time.sleep(0.001)


def test_put_the_same_objects(castore, pytestconfig, worker_id):
    barrier(pytestconfig.rootpath, "put", worker_id)
    for _ in range(5):
        files = {}
        for i, data in enumerate(BLOBS):
            assert put_blob(castore, data) == Digest.of(data)
            files[b"f%%d" %% i] = FileNode(Digest.of(data), len(data))
        directory = Directory(files)
        assert castore.put_directory(directory) == directory.digest
        assert castore.put_directory(Directory({b"sub": directory.node()}))


def test_identical_builds(ocibuild_sandbox, pytestconfig, worker_id):
    busybox = ocibuild_sandbox.host("/bin/busybox")
    barrier(pytestconfig.rootpath, "build", worker_id)
    result = ocibuild_sandbox.build({
        "inputs": {"busybox": busybox},
        "command_args": ["/inputs/busybox", "sh", "-euc",
                         "mkdir -p out/d; /inputs/busybox seq 1 20000 > out/d/numbers;"
                         "ln -s d/numbers out/link; cp /inputs/busybox out/busybox"],
        "outputs": ["build/out"],
    })
    node = result.node("build/out")
    (pytestconfig.rootpath / f"digest.{worker_id}").write_text(node.digest.hex)
"""


def test_workers_racing_on_one_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_race=INNER % {"workers": WORKERS})
    store_dir = pytester.path / "store"
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", str(WORKERS), "--dist", "each", f"--ocibuild-store={store_dir}")
    result.assert_outcomes(passed=2 * WORKERS)
    digests = {p.read_text() for p in pytester.path.glob("digest.gw*")}
    assert len(list(pytester.path.glob("digest.gw*"))) == WORKERS
    assert len(digests) == 1, digests

    store = LocalStore(store_dir)
    blobs = list(store.iter_blobs())
    assert len(blobs) >= 49
    for digest in blobs:
        reader = store.open_blob(digest)
        assert reader is not None
        with reader:
            reader.read()  # reading to EOF verifies the digest (StoreError if corrupt)
    directories = list(store.iter_directories())
    assert len(directories) >= 2
    for digest in directories:
        assert store.get_directory(digest) is not None  # verifies and decodes
    assert store.staging_files() == []
