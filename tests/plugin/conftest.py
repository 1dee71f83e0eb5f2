"""Plugin tests drive whole pytest runs through pytester.

The ``pytester`` plugin itself is enabled in tests/conftest.py: pytest refuses
``pytest_plugins`` in a conftest below the top level when collecting from ``tests/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml  # noqa: F401

# In-process pytester runs drop the modules a run imported when it ends. PyYAML's C part
# cannot be unloaded, so a second import of ``yaml`` in a later run mismatches it ("could not
# determine a constructor for the tag None"). Importing it here keeps one ``yaml`` for all runs.

BUSYBOX = "/bin/busybox"


def write_cases(pytester: pytest.Pytester, text: str, name: str = "cases/demo.yaml") -> Path:
    """Write a YAML case file (``$BUSYBOX`` is replaced by the busybox path) below pytester."""
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("$BUSYBOX", BUSYBOX))
    return path


@pytest.fixture
def needs_runc() -> None:
    """Builds need runc and busybox; CI installs both, so a missing one is an error there."""
    missing = [tool for tool in ("runc", BUSYBOX) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install runc busybox-static)")


@pytest.fixture(autouse=True)
def _private_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test's pytester runs get their own result store (the default store persists).

    ``$OCIBUILD_STORE`` is the plugin's default store, so runs that pass no
    ``--ocibuild-store`` (in-process or subprocess) use this directory, never ~/.cache.
    """
    store = tmp_path / "ocibuild-store"
    monkeypatch.setenv("OCIBUILD_STORE", str(store))
    return store


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs started by pytester are not xdist workers, even when this test runs in one.

    syrupy (and xdist) read these variables to decide whether they run in a worker.
    """
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
