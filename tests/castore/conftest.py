"""Fixtures for castore tests: one store of each backend, and a tree-building helper."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.store import Store


@pytest.fixture(params=["memory", "local", "local-nofsync", "local-named"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each test using this runs once per backend (``local-named``: named staging files, what
    filesystems without O_TMPFILE get)."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        yield LocalStore(tmp_path / "store", fsync=request.param == "local",
                         tmpfile=request.param != "local-named")


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def make_tree(root: Path) -> Path:
    """Build a tree exercising every node kind and the awkward corners; return ``root``."""
    root.mkdir()
    (root / "hello").write_bytes(b"Hello World!")
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "owner-x-only").write_bytes(b"x")
    os.chmod(root / "owner-x-only", 0o744)
    (root / "group-x-only").write_bytes(b"g")  # not executable for Nix nor tvix (mode & 0o100)
    os.chmod(root / "group-x-only", 0o654)
    (root / "empty-dir").mkdir()
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_bytes(b"leaf\n" * 1000)
    (root / "a" / "sibling").write_bytes(b"s")
    for name in ("with space", "ünïcödé", "a-", "a.b", "B", "a0", "new\nline"):
        (root / name).write_bytes(name.encode())
    os.symlink("hello", root / "rel-link")
    os.symlink("/nix/store/somewhereelse", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("../..", root / "a" / "b" / "up")
    (root / "dup").write_bytes(b"Hello World!")  # same blob as hello
    return root
