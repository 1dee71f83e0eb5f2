"""Fixtures for downstream tests: ``castore``, ``bundle_root`` and ``ocibuild_sandbox``.

Heavy modules (executor, runc) are imported when a fixture is first used, not when pytest
loads the plugin.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_ocibuild.plugin.runner import get_runner

if TYPE_CHECKING:
    from pytest_ocibuild.castore.store import Store
    from pytest_ocibuild.plugin.sandbox import Sandbox


@pytest.fixture(scope="session", autouse=True)
def ocibuild_rootless_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """As a normal user, keep pytest's temp dirs deletable by their user: what builds left
    there (kept bundles, bundles of tests that run runc themselves) belongs to subordinate
    ids. Earlier runs' ``garbage-*`` dirs (pytest's failed removals) are removed first; at
    the end of the session its basetemp is given back to the user (build/userns.py), so
    pytest's removal of old runs succeeds. Does nothing as root."""
    if os.geteuid() != 0:
        from pytest_ocibuild.build import userns

        if userns.usable():
            _remove_garbage(tmp_path_factory)
            yield
            with contextlib.suppress(OSError):
                userns.give_back(tmp_path_factory.getbasetemp())
            return
    yield


def _remove_garbage(factory: pytest.TempPathFactory) -> None:
    from pytest_ocibuild.build.atomic import remove_tree

    if getattr(factory, "_given_basetemp", None) is not None:  # --basetemp: pytest empties it
        return
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":  # one worker does it
        return
    top = next((p for p in factory.getbasetemp().parents if p.name.startswith("pytest-of-")),
               None)
    for garbage in top.glob("garbage-*") if top is not None else ():
        with contextlib.suppress(OSError):
            remove_tree(garbage)


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
