"""Fixtures for spec/bundle/runc tests: a private runc state dir and a bundle runner."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.bundle import BundleLayout, make_bundle
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.runtime import ExitStatus
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.build.schema import validate_spec
from pytest_ocibuild.build.spec import host_network_files, make_spec

BUSYBOX = Path("/bin/busybox")
_ids = itertools.count()


def container_id(tag: str = "t") -> str:
    """Unique across xdist workers and tests."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"ocibuild-test-{worker}-{os.getpid()}-{tag}-{next(_ids)}"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[RuncRuntime]:
    """runc with a state dir of its own; fails the test if a container is left behind."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc); CI installs it")
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: apt-get install busybox-static")
    rt = RuncRuntime("runc", state_dir=tmp_path / "runc-state")
    reason = rt.unavailable_reason()
    assert reason is None, reason
    yield rt
    left = rt.list()
    rt.purge("")
    assert left == [], f"containers left behind: {left}"


@dataclass
class Ran:
    """The result of running a bundle: status, layout and the log's text."""

    status: ExitStatus
    layout: BundleLayout
    spec: dict[str, Any]
    log: str


Runner = Callable[..., Ran]


@pytest.fixture
def run_bundle(runtime: RuncRuntime, tmp_path: Path) -> Runner:
    """``run_bundle(request, populate=None, timeout=60)``: spec, bundle, busybox input, run.

    ``/bin/busybox`` is copied to ``inputs/busybox`` (so ``/inputs/busybox`` with the
    default ``inputs_dir``); ``populate(layout)`` may add more before the run.
    """
    n = itertools.count()

    def run(
        request: BuildRequest,
        *,
        populate: Callable[[BundleLayout], None] | None = None,
        timeout: float | None = 60,
        edit_spec: Callable[[dict[str, Any]], None] | None = None,
    ) -> Ran:
        spec = make_spec(request, id_maps=IdMaps.detect(), network_files=host_network_files())
        validate_spec(spec)
        if edit_spec is not None:
            edit_spec(spec)
        layout = make_bundle(request, spec, tmp_path / f"bundle{next(n)}")
        if not request.inputs:
            shutil.copy2(BUSYBOX, layout.inputs_dir / "busybox")
        if populate is not None:
            populate(layout)
        log = tmp_path / "build.log"
        log.write_bytes(b"")
        status = runtime.run(layout.bundle_dir, container_id(), log=log, timeout=timeout)
        give_back_scratch(layout)
        return Ran(status, layout, spec, log.read_text(errors="replace"))

    return run


def give_back_scratch(layout: BundleLayout) -> None:
    """As a normal user, what a build wrote becomes the caller's again (as the executor does
    before ingest), so the test can read it; as root nothing changes."""
    if os.geteuid() != 0:
        from pytest_ocibuild.build.userns import give_back

        give_back([*layout.scratch_dirs.values(), layout.root_dir / "tmp"])
