"""pytest-ocibuild's pytest11 entry point: options, markers, YAML case collection, fixtures.

Only light modules are imported here; the executor and runc are imported when a case runs or
a fixture is used, so ``pytest --help`` and collection work without runc installed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.plugin.fixtures import (  # noqa: F401 (the autouse one is registered)
    bundle_root,
    castore,
    ocibuild_rootless_basetemp,
    ocibuild_sandbox,
)
from pytest_ocibuild.plugin.imagecase import ocibuild_image
from pytest_ocibuild.plugin.nixbuild import add_nix_options, nix_build
from pytest_ocibuild.plugin.runner import RUNNER_KEY, WORKER_STATS_KEY, Runner, get_runner
from pytest_ocibuild.plugin.settings import SETTINGS_KEY, add_options, read_settings

__all__ = ["bundle_root", "castore", "nix_build", "ocibuild_image", "ocibuild_sandbox"]

MARKER = ("ocibuild(timeout=None, inputs=None): a sandboxed build test; on a test using "
          "ocibuild_sandbox, overrides the per-build timeout and input provider. YAML cases "
          "carry it automatically")
CASES_GLOB_KEY = pytest.StashKey[list[re.Pattern[str]]]()
STORE_FIXTURES = frozenset({"castore", "bundle_root", "ocibuild_sandbox", "nix_build"})


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``ocibuild`` option group and its ini twins."""
    add_options(parser)
    add_nix_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, resolve settings, set up the per-process Runner."""
    config.addinivalue_line("markers", MARKER)
    settings = read_settings(config)
    config.stash[SETTINGS_KEY] = settings
    config.stash[CASES_GLOB_KEY] = case_patterns(settings.cases)
    runner = Runner(config, settings)
    config.stash[RUNNER_KEY] = runner
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_ocibuild.plugin.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(runner), "ocibuild-xdist")


def pytest_sessionstart(session: pytest.Session) -> None:
    """An xdist controller checks the store it hands to its workers: an unusable one is one
    usage error here, not a crash of every worker."""
    config = session.config
    if getattr(config, "workerinput", None) is None and \
            getattr(config.option, "dist", "no") != "no":
        check_store(config)


def check_store(config: pytest.Config) -> None:
    """The store directory, checked (and made): pytest.UsageError with one line if unusable."""
    from pytest_ocibuild.errors import OcibuildError

    try:
        get_runner(config).store_dir  # noqa: B018 - resolves and checks it
    except OcibuildError as e:
        raise pytest.UsageError(e.message) from None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check the store before the first item needing it runs (not in xdist workers: their
    controller did); Nix case items: start evaluating their targets while others run."""
    config = session.config
    if config.option.collectonly:
        return
    if getattr(config, "workerinput", None) is None and any(
            _uses_store(item) for item in session.items):
        check_store(config)
    if "pytest_ocibuild.plugin.nixcase" not in sys.modules:
        return
    from pytest_ocibuild.plugin.nixcase import expect_nix_items

    expect_nix_items(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its cache stats to the controller (a plain dict)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[WORKER_STATS_KEY] = get_runner(session.config).cache_stats()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """``ocibuild: N builds, H cached (hits), M built (misses), S saved`` (all workers), and
    where kept bundles go."""
    config = terminalreporter.config
    runner = get_runner(config)
    line = format_stats(runner.cache_stats())
    if line:
        terminalreporter.write_line(line)
    if config.stash[SETTINGS_KEY].keep_bundles:
        from pytest_ocibuild.nix.command import kept_root

        own = runner._bundle_dir  # None when this process made no bundle (xdist controller)
        where = kept_root() / own.name if own is not None else f"{kept_root()}/ocibuild-*"
        terminalreporter.write_line(f"ocibuild: bundles kept in {where} (remove them with "
                                    "'ocibuild store purge --kept')")


def pytest_unconfigure(config: pytest.Config) -> None:
    """With ``--ocibuild-keep-bundles``, move this process's bundles out of the way of later
    start-up purges (into the kept directory ``ocibuild store purge --kept`` empties)."""
    settings = config.stash.get(SETTINGS_KEY, None)
    runner = config.stash.get(RUNNER_KEY, None)
    if settings is None or runner is None or not settings.keep_bundles:
        return
    own = runner._bundle_dir
    if own is None or not own.is_dir():
        return
    from contextlib import suppress

    from pytest_ocibuild.build.lifecycle import mounts_under
    from pytest_ocibuild.nix.command import kept_root

    with suppress(OSError):
        if not mounts_under(own):
            kept_root().mkdir(mode=0o711, exist_ok=True)
            os.rename(own, kept_root() / own.name)


def format_stats(stats: dict[str, float]) -> str:
    """The summary line of cache stats ("" when nothing was built or looked up)."""
    hits, misses = int(stats.get("hits", 0)), int(stats.get("misses", 0))
    if not hits + misses:
        return ""
    return (f"ocibuild: {hits + misses} builds, {hits} cached (hits), {misses} built (misses), "
            f"{float(stats.get('time_saved', 0)):.1f}s saved")


def _uses_store(item: pytest.Item) -> bool:
    if type(item).__module__.startswith("pytest_ocibuild.plugin."):
        return type(item).__name__ != "InvalidCaseItem"
    return not STORE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """YAML files under ``ocibuild_cases`` that hold build cases become CaseFiles (a file
    named on the command line needs only to be under ``ocibuild_cases``)."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    patterns = parent.config.stash[CASES_GLOB_KEY]
    if not patterns:
        return None
    try:
        rel = file_path.relative_to(parent.config.rootpath).as_posix()
    except ValueError:
        return None
    if not any(p.fullmatch(rel) for p in patterns):
        return None
    from pytest_ocibuild.plugin.collect import CaseFile, looks_like_cases

    if not parent.session.isinitpath(file_path) and not looks_like_cases(file_path):
        return None

    return CaseFile.from_parent(parent, path=file_path)


def case_patterns(setting: str) -> list[re.Pattern[str]]:
    """Regexes of the ``ocibuild_cases`` entries (space- or comma-separated): a glob, or a
    directory (``cases/``, ``cases``) standing for every ``.yaml``/``.yml`` file below it."""
    out = []
    for entry in setting.replace(",", " ").split():
        entry = entry.removeprefix("./")
        if entry.endswith("/") or not (set(entry) & set("*?[") or
                                       entry.endswith((".yaml", ".yml"))):
            base = entry.rstrip("/").removeprefix(".")
            below = f"{base}/**/" if base else "**/"
            out += [glob_regex(f"{below}*.yaml"), glob_regex(f"{below}*.yml")]
        else:
            out.append(glob_regex(entry))
    return out


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
