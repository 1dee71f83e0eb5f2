"""Per-process plugin state (kept in ``config.stash``): the shared store, executors, built cases.

Under xdist every worker has its own Runner; they share only the store directory, which the
controller chooses and sends in ``workerinput`` (a plain string). Each worker keeps its own
bundles and logs, and its own cache of built cases: a case another case depends on may be
built once per worker, which is harmless because identical requests give identical outputs.
Logs go under pytest's basetemp; bundles go to a directory of the process's own,
``ocibuild-<pid>-<hex>`` in the per-user bundle root (``locations.bundle_root``), never under
basetemp: should the process be killed, its reaper removes that directory, and else a later
start's purge finds it (and no mount is ever left where pytest cleans up basetemp).
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_ocibuild.build.store_dir import usable_store_dir
from pytest_ocibuild.errors import CaseError, OcibuildError
from pytest_ocibuild.plugin.settings import Settings

if TYPE_CHECKING:
    from pytest_ocibuild.build.executor import Executor
    from pytest_ocibuild.build.request import Build, BuildRequest
    from pytest_ocibuild.castore.nodes import Node
    from pytest_ocibuild.castore.store import Store
    from pytest_ocibuild.plugin.case import BadCase, Case, CaseInput
    from pytest_ocibuild.plugin.heartbeat import Heartbeat

WORKER_STORE_KEY = "ocibuild_store"  # workerinput key holding the store directory
WORKER_STATS_KEY = "ocibuild_stats"  # workeroutput key: the worker's cache stats (plain dict)
STAT_FIELDS = ("hits", "misses", "time_saved")
STORE_HINT = "set --ocibuild-store, ocibuild_store or $OCIBUILD_STORE to a writable directory"


class Runner:
    """Lazily opens the store and the case executor; builds cases at most once per process."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._lock = threading.RLock()
        self._store_dir: Path | None = None
        self._work_dir: Path | None = None
        self._bundle_dir: Path | None = None
        self._bundle_dirs = itertools.count()
        self._store: Store | None = None
        self._executors: dict[str, Executor] = {}
        self._all_executors: list[Executor] = []  # every executor made, for cache stats
        self._remote_stats: dict[str, float] = dict.fromkeys(STAT_FIELDS, 0)  # xdist workers
        self._files: dict[Path, list[Case | BadCase]] = {}
        self._hosts: dict[Path, Node] = {}
        self._built: dict[tuple[Path, str], Build | OcibuildError] = {}
        self._building: set[tuple[Path, str]] = set()
        self._heartbeat: Heartbeat | None = None
        self._canonical: Executor | None = None  # builds nothing: specs for the goldens
        self._requests: dict[tuple[Path, str], BuildRequest] = {}
        if getattr(config, "workerinput", None) is None:
            free_basetemp(config.option.basetemp)

    # ---- locations ----------------------------------------------------------------------

    @property
    def worker_id(self) -> str | None:
        """The xdist worker id (``gw0``...), or None in the controller / without xdist."""
        workerinput = getattr(self.config, "workerinput", None)
        return None if workerinput is None else str(workerinput.get("workerid"))

    @property
    def store_dir(self) -> Path:
        """The castore (and result cache) directory every process of this run shares.

        ``--ocibuild-store``, else ``$OCIBUILD_STORE``, else ``~/.cache/ocibuild/store``: it
        persists, so a later run finds the results of this one.
        """
        with self._lock:
            if self._store_dir is None:
                workerinput = getattr(self.config, "workerinput", {})
                if self.settings.store:
                    path = Path(self.settings.store)
                elif WORKER_STORE_KEY in workerinput:
                    path = Path(workerinput[WORKER_STORE_KEY])
                else:
                    from pytest_ocibuild.build.locations import default_store_dir

                    path = default_store_dir()
                # checked before anything is written: one line naming it if unusable
                self._store_dir = usable_store_dir(path, hint=STORE_HINT)
            return self._store_dir

    @property
    def bundle_dir(self) -> Path:
        """This process's own directory in the per-user bundle root (see the module
        docstring); removed when pytest ends, unless bundles are kept."""
        with self._lock:
            if self._bundle_dir is None or not self._bundle_dir.name.startswith(
                    f"ocibuild-{os.getpid()}-"):  # made by the parent of a forked process
                from pytest_ocibuild.build.atomic import remove_tree
                from pytest_ocibuild.build.locations import bundle_root

                path = bundle_root() / f"ocibuild-{os.getpid()}-{secrets.token_hex(4)}"
                path.mkdir(mode=0o711)
                if not self.settings.keep_bundles:
                    pid = os.getpid()
                    self.config.add_cleanup(
                        lambda: remove_tree(path) if os.getpid() == pid else None)
                self._bundle_dir = path
            return self._bundle_dir

    def new_bundle_dir(self, tag: str) -> Path:
        """A fresh directory below ``bundle_dir`` (e.g. one test's bundle root)."""
        path = self.bundle_dir / f"{tag}-{next(self._bundle_dirs)}"
        path.mkdir(mode=0o711)
        return path

    @property
    def work_dir(self) -> Path:
        """This process's own directory (under basetemp) for build logs."""
        with self._lock:
            if self._work_dir is None:
                self._work_dir = self._tmp_factory().mktemp("ocibuild")
            return self._work_dir

    def _tmp_factory(self) -> pytest.TempPathFactory:
        # pytest keeps the factory on the config (xdist reads it the same way); it honours
        # --basetemp and removes old runs' directories.
        return self.config._tmp_path_factory  # type: ignore[attr-defined,no-any-return]

    # ---- store and executors ------------------------------------------------------------

    def store(self) -> Store:
        """The shared castore."""
        with self._lock:
            if self._store is None:
                from pytest_ocibuild.castore.store import open_store

                self._store = open_store(self.store_dir)
            return self._store

    def new_executor(self, bundle_root: Path, **overrides: Any) -> Executor:
        """An executor over the shared store with the session settings (plus ``overrides``).

        It uses the store's result cache (unless ``--ocibuild-no-cache``), deterministic
        failures (exit code, missing output) included; a timeout is cached only for a case
        that expects one (see ``build``), otherwise it runs again.
        """
        from pytest_ocibuild.build.executor import open_executor
        from pytest_ocibuild.build.limits import Limits

        kwargs: dict[str, Any] = {
            "runtime": self.settings.runtime, "inputs": self.settings.inputs,
            "keep_bundles": self.settings.keep_bundles, "timeout": self.settings.timeout,
            "cache": not self.settings.no_cache, "cache_failures": True,
            "limits": Limits(**self.settings.limits) if self.settings.limits else None,
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        executor = open_executor(store=self.store_dir, bundle_root=bundle_root, **kwargs)
        with self._lock:
            self._all_executors.append(executor)
        return executor

    def cache_stats(self) -> dict[str, float]:
        """Hits, misses and seconds saved of this process's builds plus those workers sent."""
        with self._lock:
            total = dict(self._remote_stats)
            for executor in self._all_executors:
                for key, value in executor.stats.to_dict().items():
                    total[key] = total.get(key, 0) + value
        return total

    def add_worker_stats(self, stats: dict[str, float]) -> None:
        """Add the cache stats an xdist worker reported (``workeroutput``)."""
        with self._lock:
            for key in STAT_FIELDS:
                self._remote_stats[key] += float(stats.get(key, 0))

    def executor(self, provider: str | None = None, runtime: str | None = None) -> Executor:
        """The executor YAML cases run on (one per process, input provider and runtime)."""
        provider = provider or self.settings.inputs
        runtime = runtime or self.settings.runtime
        key = provider if runtime == self.settings.runtime else f"{provider}-{runtime}"
        with self._lock:
            if key not in self._executors:
                self._executors[key] = self.new_executor(
                    self.bundle_dir / f"bundles-{key}", inputs=provider, runtime=runtime)
            return self._executors[key]

    def golden_spec(self, request: BuildRequest) -> dict[str, Any]:
        """The config.json a case build uses, with canonical ids (no host uids) and limits
        as root has them (cgroups), so goldens are the same for every user."""
        from pytest_ocibuild.build.executor import Executor
        from pytest_ocibuild.build.ids import IdMaps

        with self._lock:
            if self._canonical is None:
                ex = self.executor()
                self._canonical = Executor(ex.store, inputs=ex.inputs, runtime=ex.runtime,
                                           bundle_root=ex.bundle_root,
                                           id_maps=IdMaps.canonical())
        return self._canonical.spec(request, cgroups=True)

    # ---- cases --------------------------------------------------------------------------

    def case_file(self, path: Path) -> list[Case | BadCase]:
        """The cases of a YAML file (parsed once per process); CaseError if the file is bad."""
        from pytest_ocibuild.plugin.case import load_case_file

        path = path.resolve()
        with self._lock:
            if path not in self._files:
                self._files[path] = load_case_file(path)
            return self._files[path]

    def request_for(self, case: Case) -> BuildRequest:
        """The case's BuildRequest, its inputs in the store (other cases built as needed);
        made once per process."""
        key = (case.path, case.name)
        with self._lock:
            known = self._requests.get(key)
        if known is None:
            known = self._make_request(case)
            with self._lock:
                self._requests[key] = known
        return known

    def _make_request(self, case: Case) -> BuildRequest:
        from pytest_ocibuild.build.request_io import request_from_dict
        from pytest_ocibuild.castore.ingest import ingest_path
        from pytest_ocibuild.plugin.case import CaseInput, HostInput
        from pytest_ocibuild.plugin.trees import put_tree

        nodes: dict[str, Node] = {}
        for name, spec in case.inputs.items():
            if isinstance(spec, HostInput):
                with self._lock:
                    if spec.path not in self._hosts:
                        if not spec.path.exists() and not spec.path.is_symlink():
                            raise CaseError(f"{case.path}:{case.line}: case {case.name!r}: "
                                            f"input {name!r}: {spec.path} does not exist")
                        self._hosts[spec.path] = ingest_path(self.store(), spec.path)
                    nodes[name] = self._hosts[spec.path]
            elif isinstance(spec, CaseInput):
                nodes[name] = self._case_output(case, name, spec)
            else:
                nodes[name] = put_tree(self.store(), spec.entries)
        request = request_from_dict(case.request,
                                    source=f"{case.path}:{case.line}: case {case.name!r}")
        return replace(request, inputs=nodes)

    def build(self, case: Case) -> Build:
        """Build ``case`` (once per process; a failure is remembered and raised again)."""
        key = (case.path.resolve(), case.name)
        with self._lock:
            if key in self._building:
                raise CaseError(f"{case.path}:{case.line}: case {case.name!r}: "
                                "its inputs depend on itself (from_case cycle)")
            done = self._built.get(key)
            if done is None:
                self._building.add(key)
        if isinstance(done, OcibuildError):
            raise done
        if done is not None:
            return done
        try:
            request = self.request_for(case)
            log = self.log_path(case)
            with self.heartbeat.watch(f"{case.path.name}::{case.name}", log):
                failure = case.expect.failure
                result: Build | OcibuildError = self.executor(case.provider, case.runtime).build(
                    request, timeout=case.timeout, log=log,
                    expect_timeout=failure is not None and failure.reason == "timeout")
        except OcibuildError as e:
            result = e
        finally:
            with self._lock:
                self._building.discard(key)
        with self._lock:
            self._built[key] = result
        if isinstance(result, OcibuildError):
            raise result
        return result

    def log_path(self, case: Case) -> Path:
        """Where the build log of ``case`` goes."""
        return self.work_dir / "logs" / f"{case.path.stem}--{case.name}.log"

    def _case_output(self, case: Case, name: str, spec: CaseInput) -> Node:
        """The node of another case's output (building that case first)."""
        from pytest_ocibuild.plugin.case import Case as CaseType

        where = f"{case.path}:{case.line}: case {case.name!r}: input {name!r}"
        file_part, sep, other_name = spec.ref.rpartition("::")
        other_path = (case.path.parent / file_part) if sep else case.path
        try:
            candidates = self.case_file(other_path)
        except CaseError as e:
            raise CaseError(f"{where}: {e.message}") from None
        other = next((c for c in candidates if c.name == other_name), None)
        if other is None:
            raise CaseError(f"{where}: no case {other_name!r} in {other_path}")
        if not isinstance(other, CaseType):
            raise CaseError(f"{where}: case {other_name!r} is invalid: {other.message}")
        outputs = tuple(other.request.get("outputs", ()))
        output = spec.output or (outputs[0] if len(outputs) == 1 else None)
        if output not in outputs:
            raise CaseError(f"{where}: name one of {other_name!r}'s outputs {list(outputs)} "
                            "with 'output:'")
        try:
            return self.build(other).output(output)
        except OcibuildError as e:
            raise CaseError(f"{where}: case {other_name!r} failed: {e.message}",
                            reason="dependency-failed", detail=e.detail) from None

    # ---- progress -----------------------------------------------------------------------

    @property
    def heartbeat(self) -> Heartbeat:
        """Reports builds running longer than ``progress`` seconds (see ``heartbeat``)."""
        with self._lock:
            if self._heartbeat is None:
                from pytest_ocibuild.plugin.heartbeat import Heartbeat

                self._heartbeat = Heartbeat(self.settings.progress, self.say)
            return self._heartbeat

    def say(self, line: str) -> None:
        """Write a line to the terminal now, even while output is being captured."""
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        with self._lock, capman.global_and_fixture_disabled() if capman else _nothing():
            if reporter is not None and self.worker_id is None:
                reporter.write_line(line)
            else:  # xdist workers have no terminal; their stderr is the controller's
                print(f"[{self.worker_id}] {line}", file=sys.stderr, flush=True)


def free_basetemp(basetemp: str | None) -> list[str]:
    """Detach mounts a killed run of an older version left below ``--basetemp`` (in bundle
    directories of dead processes), which would make pytest's removal of it fail and then
    its ``mkdir`` raise FileExistsError (an INTERNALERROR). The mount points detached."""
    if not basetemp or not os.path.isdir(basetemp):
        return []
    from pytest_ocibuild.build.atomic import pid_alive
    from pytest_ocibuild.build.lifecycle import mounts_under, owner_pid
    from pytest_ocibuild.build.materialize import unmount
    from pytest_ocibuild.build.root_pool import pool_pid

    done = []
    for point in sorted(mounts_under(Path(basetemp)), key=len, reverse=True):
        pids = {owner_pid(part) or pool_pid(part) for part in point.split("/")} - {None}
        if pids and not any(pid_alive(pid) for pid in pids if pid is not None):
            with suppress(Exception):
                unmount(point, lazy=True)
                done.append(point)
    return done


@contextmanager
def _nothing() -> Iterator[None]:
    yield


RUNNER_KEY = pytest.StashKey[Runner]()


def get_runner(config: pytest.Config) -> Runner:
    """The Runner of this pytest process."""
    return config.stash[RUNNER_KEY]

