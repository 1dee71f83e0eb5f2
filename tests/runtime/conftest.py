"""Fixtures of the runtime suites: each backend by name, failing (not skipping) when absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.build.runtime import RUNTIMES, open_runtime

ROOT = Path(__file__).resolve().parents[2]


def backend_params() -> list[object]:
    return [pytest.param(name, id=name) for name in RUNTIMES]


def require(name: str) -> None:
    """Fail the test, naming the fix, when backend ``name`` cannot run here (CI installs all
    four: .ci/setup)."""
    reason = open_runtime(name).unavailable_reason()
    if reason:
        pytest.fail(f"runtime {name} is unavailable: {reason}")


def ocibuild(*args: str, tmp: Path, timeout: float = 600, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """``ocibuild ARGS`` with its own store and runtime directory under ``tmp``."""
    run = tmp / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env = {**(os.environ if env is None else env), "OCIBUILD_STORE": str(tmp / "store"),
           "XDG_RUNTIME_DIR": str(run)}
    return subprocess.run([sys.executable, "-m", "pytest_ocibuild", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
