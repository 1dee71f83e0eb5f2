"""Suite-wide configuration: pytester for the plugin tests (only a top-level conftest may
declare plugins), and a private result store so the suite never touches ~/.cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Hypothesis's own plugin is loaded here rather than from its entry point, which pyproject's
# addopts turn off: it imports all of hypothesis (0.2-0.6 s) at the end of every run, which a
# run of YAML cases alone does not need; without it, tests here would warn about strategies
# built at import time.
pytest_plugins = ["pytester", "_hypothesis_pytestplugin"]


def pytest_configure(config: pytest.Config) -> None:
    """Point the plugin's default store (``$OCIBUILD_STORE``) at a throwaway directory.

    Without it, the ``castore``/``ocibuild_sandbox`` fixtures and every ``open_executor()``
    without a store would use the persistent ~/.cache/ocibuild/store. xdist workers inherit
    the variable from the controller; an explicit ``$OCIBUILD_STORE`` is left alone.
    """
    if os.environ.get("OCIBUILD_STORE") or hasattr(config, "workerinput"):
        return
    path = tempfile.mkdtemp(prefix="ocibuild-test-store-")
    os.environ["OCIBUILD_STORE"] = path

    def cleanup() -> None:
        os.environ.pop("OCIBUILD_STORE", None)
        shutil.rmtree(path, ignore_errors=True)

    config.add_cleanup(cleanup)


@pytest.fixture(scope="session")
def bbdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only a copy of the static /bin/busybox (``--arg bbdir`` of nix/)."""
    src = Path("/bin/busybox")
    if not src.exists():
        pytest.skip("needs /bin/busybox")
    d = tmp_path_factory.mktemp("bb") / "busybox-dir"
    d.mkdir()
    shutil.copy2(src, d / "busybox")
    return d
