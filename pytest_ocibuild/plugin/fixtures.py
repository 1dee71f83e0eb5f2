"""Fixtures for downstream tests: ``castore``, ``bundle_root`` and ``ocibuild_sandbox``.

Heavy modules (executor, runc) are imported when a fixture is first used, not when pytest
loads the plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_ocibuild.plugin.runner import get_runner

if TYPE_CHECKING:
    from pytest_ocibuild.castore.store import Store
    from pytest_ocibuild.plugin.sandbox import Sandbox


@pytest.fixture(scope="session")
def castore(pytestconfig: pytest.Config) -> Store:
    """The session's content-addressed store, one directory shared by every xdist worker.

    Writes are atomic and content-addressed, so workers may put the same objects at once.
    Its location is ``--ocibuild-store`` / ``ocibuild_store``, by default under basetemp.
    """
    return get_runner(pytestconfig).store()


@pytest.fixture
def bundle_root(pytestconfig: pytest.Config) -> Iterator[Path]:
    """A fresh directory for this test's OCI bundles, in the per-user bundle root (where the
    reaper of a killed run, or a later run's purge, finds what it left; not under basetemp);
    removed after the test unless bundles are kept (``--ocibuild-keep-bundles``)."""
    from pytest_ocibuild.build.atomic import remove_tree

    runner = get_runner(pytestconfig)
    path = runner.new_bundle_dir("test")
    yield path
    if not runner.settings.keep_bundles:
        remove_tree(path)


@pytest.fixture
def ocibuild_sandbox(
    request: pytest.FixtureRequest, castore: Store, bundle_root: Path, tmp_path: Path
) -> Sandbox:
    """Build requests in ephemeral runc containers over ``castore``.

    ``@pytest.mark.ocibuild(timeout=..., inputs=...)`` on a test overrides the session's
    per-build timeout and input provider for it. See ``Sandbox`` and ``BuildResult``.
    """
    from pytest_ocibuild.plugin.sandbox import Sandbox

    marker = request.node.get_closest_marker("ocibuild")
    overrides = dict(marker.kwargs) if marker else {}
    unknown = set(overrides) - {"timeout", "inputs"}
    if unknown:
        pytest.fail(f"@pytest.mark.ocibuild: unknown argument(s) {sorted(unknown)} "
                    "(expected timeout, inputs)", pytrace=False)
    executor = get_runner(request.config).new_executor(bundle_root, **overrides)
    return Sandbox(executor, log_dir=tmp_path / "ocibuild-logs")
