"""pytest-ocibuild's pytest11 entry point: options, markers, YAML case collection, fixtures.

Only light modules are imported here; the executor and runc are imported when a case runs or
a fixture is used, so ``pytest --help`` and collection work without runc installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.plugin.fixtures import bundle_root, castore, ocibuild_sandbox
from pytest_ocibuild.plugin.nixbuild import add_nix_options, nix_build
from pytest_ocibuild.plugin.runner import RUNNER_KEY, WORKER_STATS_KEY, Runner, get_runner
from pytest_ocibuild.plugin.settings import SETTINGS_KEY, add_options, read_settings

__all__ = ["bundle_root", "castore", "nix_build", "ocibuild_sandbox"]

MARKER = ("ocibuild(timeout=None, inputs=None): a sandboxed build test; on a test using "
          "ocibuild_sandbox, overrides the per-build timeout and input provider. YAML cases "
          "carry it automatically")
CASES_GLOB_KEY = pytest.StashKey[re.Pattern[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``ocibuild`` option group and its ini twins."""
    add_options(parser)
    add_nix_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, resolve settings, set up the per-process Runner."""
    config.addinivalue_line("markers", MARKER)
    settings = read_settings(config)
    config.stash[SETTINGS_KEY] = settings
    config.stash[CASES_GLOB_KEY] = glob_regex(settings.cases)
    runner = Runner(config, settings)
    config.stash[RUNNER_KEY] = runner
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_ocibuild.plugin.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(runner), "ocibuild-xdist")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Nix case items: start evaluating their targets while other items run."""
    if session.config.option.collectonly or "pytest_ocibuild.plugin.nixcase" not in sys.modules:
        return
    from pytest_ocibuild.plugin.nixcase import expect_nix_items

    expect_nix_items(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its cache stats to the controller (a plain dict)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[WORKER_STATS_KEY] = get_runner(session.config).cache_stats()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """``ocibuild: N builds, H cached (hits), M built (misses), S saved`` (all workers)."""
    stats = get_runner(terminalreporter.config).cache_stats()
    line = format_stats(stats)
    if line:
        terminalreporter.write_line(line)


def format_stats(stats: dict[str, float]) -> str:
    """The summary line of cache stats ("" when nothing was built or looked up)."""
    hits, misses = int(stats.get("hits", 0)), int(stats.get("misses", 0))
    if not hits + misses:
        return ""
    return (f"ocibuild: {hits + misses} builds, {hits} cached (hits), {misses} built (misses), "
            f"{float(stats.get('time_saved', 0)):.1f}s saved")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """YAML files matching ``ocibuild_cases`` become CaseFiles."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    try:
        rel = file_path.relative_to(parent.config.rootpath).as_posix()
    except ValueError:
        return None
    if not parent.config.stash[CASES_GLOB_KEY].fullmatch(rel):
        return None
    from pytest_ocibuild.plugin.collect import CaseFile

    return CaseFile.from_parent(parent, path=file_path)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a path glob: ``*`` and ``?`` stay within a component, ``**/`` spans any."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
