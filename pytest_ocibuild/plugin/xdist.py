"""xdist glue, registered only when pytest-xdist is active: hand the store to the workers."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_ocibuild.plugin.runner import WORKER_STORE_KEY, Runner


class XdistHooks:
    """Controller-side hooks; ``workerinput`` carries only plain strings."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Give each worker the one store directory of this run."""
        node.workerinput[WORKER_STORE_KEY] = str(self.runner.store_dir)
