"""xdist glue, registered only when pytest-xdist is active: hand the store to the workers,
collect their cache stats."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_ocibuild.plugin.runner import WORKER_STATS_KEY, WORKER_STORE_KEY, Runner


class XdistHooks:
    """Controller-side hooks; ``workerinput`` carries only plain strings."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Give each worker the one store directory of this run."""
        node.workerinput[WORKER_STORE_KEY] = str(self.runner.store_dir)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Add a finished worker's cache stats (``workeroutput``) to the run's."""
        stats = getattr(node, "workeroutput", {}).get(WORKER_STATS_KEY)
        if stats:
            self.runner.add_worker_stats(stats)
