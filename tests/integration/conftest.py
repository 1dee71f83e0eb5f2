"""Fixtures for end-to-end builds: a real LocalStore, real runc, real input providers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node

BUSYBOX = Path("/bin/busybox")


def fuse_mounts_under(root: Path) -> list[str]:
    """Mount points below ``root`` (from /proc/mounts)."""
    text = Path("/proc/mounts").read_text()
    return [ln.split()[1] for ln in text.splitlines() if ln.split()[1].startswith(str(root))]


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def busybox(shared_store: LocalStore) -> Node:
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: apt-get install busybox-static")
    return ingest_path(shared_store, BUSYBOX)


@pytest.fixture(params=["materialize", "fuse"])
def provider(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def executor(tmp_path: Path, shared_store: LocalStore, provider: str) -> Iterator[Executor]:
    """An Executor over the shared store; fails the test if it leaves containers or mounts."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc); CI installs it")
    root = tmp_path / "bundles"
    runtime = RuncRuntime("runc", state_dir=tmp_path / "runc-state")
    ex = Executor(shared_store, inputs=open_input_provider(provider), runtime=runtime,
                  bundle_root=root)
    yield ex
    left = runtime.list()
    runtime.purge("")
    assert left == [], f"containers left behind: {left}"
    assert fuse_mounts_under(tmp_path) == []
    leftovers = [p.name for p in root.iterdir() if p.name.startswith("ocibuild-")]
    assert leftovers == [], f"bundles left behind: {leftovers}"
