"""What the input-provider tests share: the tree they serve, stores, providers, mount checks."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build.fuse_inputs import check_fuse
from pytest_ocibuild.build.inputs import InputProvider, open_input_provider
from pytest_ocibuild.build.materialize import mount_at
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import RuntimeUnavailable
from tests.build.trees import Exec, Link

BIG = bytes(range(256)) * (20 * 4096)  # 20 MiB
SPEC = {
    "hello": b"Hello World!\n",
    "empty-file": b"",
    "empty-dir/": {},
    "bin/tool": Exec(b"#!/bin/sh\necho hi\n"),
    "bin/empty-exec": Exec(b""),
    "lib/deep/er/still/file": b"deep",
    "lib/deep/sibling": b"sib",
    "lib/link": Link("deep/sibling"),
    "dangling": Link("/nix/store/nowhere"),
    "dir-link": Link("lib"),
    "odd name \u00e9": b"unicode",
    "big": BIG,
}
PROVIDERS = ["fuse", "materialize"]
WRITE_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM}


def fuse_mounts_under(path: Path) -> list[str]:
    """Mount points in /proc/mounts at or below ``path``."""
    prefix = os.path.realpath(path)
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def force_unmount(at: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(5):
        if mount_at(at) is None:
            return
        libc.umount2(os.fsencode(os.path.realpath(at)), 2)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return LocalStore(tmp_path / "store", fsync=False)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> InputProvider:
    if request.param == "fuse":
        try:
            check_fuse()
        except RuntimeUnavailable as e:
            pytest.skip(str(e))
    return open_input_provider(request.param)


@pytest.fixture
def inputs_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty inputs directory; the test fails (after a forced unmount) if a mount remains."""
    at = tmp_path / "inputs"
    at.mkdir()
    yield at
    left = fuse_mounts_under(tmp_path)
    for point in left:
        force_unmount(Path(point))
    assert left == [], f"mounts left behind: {left}"


def assert_clean(at: Path) -> None:
    assert os.listdir(at) == []
    assert mount_at(at) is None
    assert fuse_mounts_under(at) == []


class Boom(Exception):
    pass
