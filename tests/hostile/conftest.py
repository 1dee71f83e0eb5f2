"""Hostile builds run on the same real fixtures as the end-to-end tests (real runc, a real
LocalStore, both input providers), plus ``probe``: a static C program trying one attack per
argument (probe.c), compiled for this session and stored as an input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from tests.integration.conftest import busybox, executor, provider, shared_store

__all__ = ["busybox", "executor", "probe", "provider", "shared_store"]

PROBE_SOURCE = Path(__file__).with_name("probe.c")


@pytest.fixture(scope="session")
def probe(shared_store: LocalStore, tmp_path_factory: pytest.TempPathFactory) -> Node:
    """probe.c built with ``gcc -static`` (.ci/setup installs gcc and libc6-dev)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: apt-get install gcc libc6-dev (.ci/setup does)")
    out = tmp_path_factory.mktemp("probe") / "probe"
    done = subprocess.run([cc, "-static", "-O1", "-o", str(out), str(PROBE_SOURCE)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot compile {PROBE_SOURCE}: {done.stderr}"
    return ingest_path(shared_store, out)
