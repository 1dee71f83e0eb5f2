"""Fixtures for the result cache, caches and lifecycle: real runc, real stores, real processes."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.caches import CacheStore
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.results import ResultStore
from pytest_ocibuild.build.runtime import ExitStatus
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node

BUSYBOX = Path("/bin/busybox")
REPO = Path(__file__).resolve().parents[2]  # children run from here: ``-m tests.cache.child``


def child_cmd(root: Path, work: Path, request: Path, *extra: str) -> list[str]:
    """Command line of a build in its own process (see tests/cache/child.py)."""
    import sys

    return [sys.executable, "-m", "tests.cache.child", str(root), str(work), str(request),
            *extra]


class CountingRuntime(RuncRuntime):
    """The real RuncRuntime, counting ``run`` calls (and appending each to ``record`` if set)."""

    def __init__(self, *args: Any, record: Path | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.record = record
        self.runs = 0
        self._lock = threading.Lock()

    def run(self, bundle: Path, container_id: str, *, log: Path,
            timeout: float | None, max_silent: float | None = None) -> ExitStatus:
        with self._lock:
            self.runs += 1
        if self.record is not None:
            with open(self.record, "a") as f:  # O_APPEND: one line per run, any process
                f.write(container_id + "\n")
        return super().run(bundle, container_id, log=log, timeout=timeout,
                           max_silent=max_silent)


def sh(busybox: Node, script: str, **kw: Any) -> BuildRequest:
    """A request running ``script`` with busybox sh; output ``build/out`` by default."""
    kw.setdefault("outputs", ("build/out",))
    inputs = {"busybox": busybox, **kw.pop("inputs", {})}
    return BuildRequest(inputs=inputs, command_args=("/inputs/busybox", "sh", "-c", script),
                        **kw)


def make_executor(root: Path, work: Path, *, provider: str = "materialize",
                  **kw: Any) -> Executor:
    """An Executor with results and caches in ``root``; bundles and runc state in ``work``."""
    runtime = kw.pop("runtime", None) or CountingRuntime("runc", state_dir=work / "runc-state")
    return Executor(LocalStore(root), inputs=open_input_provider(provider), runtime=runtime,
                    bundle_root=work / "bundles", results=ResultStore(root),
                    caches=CacheStore(root), **kw)


@pytest.fixture(autouse=True)
def _needs_runc() -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc); CI installs it")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def busybox(root: Path) -> Node:
    return ingest_path(LocalStore(root), BUSYBOX)


@pytest.fixture
def executor_factory(root: Path, tmp_path: Path) -> Iterator[Callable[..., Executor]]:
    """Makes executors over ``root``; checks afterwards that none left containers behind."""
    made: list[Executor] = []

    def factory(**kw: Any) -> Executor:
        ex = make_executor(root, tmp_path / f"work{len(made)}", **kw)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        left = ex.runtime.list()  # type: ignore[attr-defined]
        ex.runtime.purge("")  # type: ignore[attr-defined]
        assert left == [], f"containers left behind: {left}"


@pytest.fixture
def executor(executor_factory: Callable[..., Executor]) -> Executor:
    return executor_factory()
