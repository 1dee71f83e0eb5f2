"""Nix derivations in pytest: build them in our sandbox, optionally also with the real
``nix-build``, and compare the two (the ``nix_build`` fixture; Nix YAML cases use the same).

Our side evaluates with ``nix-instantiate`` into a private eval store (``/nix/store`` is left
alone) and builds with ``NixBuilder`` over the session's castore. Nix's side runs
``NIX_REMOTE= nix-build --option sandbox true --option substituters ''``, which of course
writes ``/nix/store``. The comparison and its report are in ``nixdiff``.

Heavy modules are imported when something is first built, not when pytest loads the plugin.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_ocibuild.errors import NixError, OcibuildError
from pytest_ocibuild.plugin.nixdiff import Result, Side, compare, nix_side, run_nix_build
from pytest_ocibuild.plugin.nixresult import NixBuildResult, NixComparison, NixTarget
from pytest_ocibuild.plugin.nixverdicts import Verdicts
from pytest_ocibuild.plugin.runner import get_runner

if TYPE_CHECKING:
    from pytest_ocibuild.nix.build import NixBuilder

BUSYBOX = Path("/bin/busybox")


class NixSession:
    """Per pytest process: the busybox directory, the builder and its private eval store."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._bbdir: Path | None = None
        self._builder: NixBuilder | None = None
        self._exports = itertools.count()
        self._drvs: dict[tuple[str, ...], str] = {}  # target argv → its .drv, evaluated once
        self._evaluations: list[threading.Thread] = []  # see ``expect``

    @property
    def work_dir(self) -> Path:
        path = get_runner(self.config).work_dir / "nix"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def bbdir(self) -> Path:
        """A directory holding only a copy of /bin/busybox (``--arg bbdir`` of nix/)."""
        with self._lock:
            if self._bbdir is None:
                if not BUSYBOX.exists():
                    raise NixError(f"bbdir: auto needs {BUSYBOX} (apt-get install "
                                   "busybox-static)")
                d = self.work_dir / "busybox-dir"
                d.mkdir(exist_ok=True)
                if not (d / "busybox").exists():
                    shutil.copy2(BUSYBOX, d / "busybox.tmp")
                    os.replace(d / "busybox.tmp", d / "busybox")
                self._bbdir = d
            return self._bbdir

    @property
    def state_dir(self) -> Path:
        """``<store>/nix``: what outlives this run (eval store, sources, results, verdicts)."""
        path = get_runner(self.config).store_dir / "nix"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def eval_store(self) -> Path:
        """The private store ``nix-instantiate`` writes .drv files and sources into."""
        path = self.state_dir / "eval-store"
        path.mkdir(exist_ok=True)
        return path

    @property
    def no_cache(self) -> bool:
        """``--ocibuild-no-cache``: build again and run nix-build again."""
        return get_runner(self.config).settings.no_cache

    @property
    def verdicts(self) -> Verdicts:
        """Comparisons with nix-build that agreed (see ``nixverdicts``)."""
        return Verdicts(self.state_dir / "verdicts")

    def builder(self) -> NixBuilder:
        with self._lock:
            if self._builder is None:
                from pytest_ocibuild.nix.build import NixBuilder
                from pytest_ocibuild.nix.command import settings_from_nix

                runner = get_runner(self.config)
                executor = runner.new_executor(self.work_dir / "bundles")
                # --ocibuild-no-cache: results kept by derivation start afresh as well
                state = self.work_dir / "state" if self.no_cache else self.state_dir
                self._builder = NixBuilder(
                    executor, state,
                    settings=settings_from_nix(),  # type: ignore[arg-type]
                    store_root=self.eval_store)
            return self._builder

    def expect(self, targets: list[NixTarget]) -> None:
        """Targets about to be built: start finding their .drv paths in the background.

        One read-only evaluation per file and arguments finds those an earlier run already
        wrote (see ``known_drv_paths``); ``instantiate`` waits for it, then evaluates the rest.
        """
        pending = [t for t in targets if t.drv is None and t.attr]
        if not pending:
            return
        thread = threading.Thread(target=self._find_known, args=(pending,), daemon=True,
                                  name="ocibuild-nix-eval")
        with self._lock:
            self._evaluations.append(thread)
        thread.start()

    def instantiate(self, target: NixTarget) -> str:
        """The .drv path of ``target`` (a ``.nix`` file is evaluated into the eval store,
        once per session)."""
        if target.drv is not None:
            return target.drv
        from pytest_ocibuild.nix.evaluate import instantiate

        with self._lock:
            evaluations = list(self._evaluations)
        for thread in evaluations:
            thread.join()
        key = tuple(target.argv())
        with self._lock:
            known = self._drvs.get(key)
        if known is not None:
            return known
        drv = instantiate(target.file or "", attr=target.attr, args=dict(target.args),
                          argstrs=dict(target.argstrs), store_root=self.eval_store)
        with self._lock:
            self._drvs[key] = drv
        return drv

    def _find_known(self, targets: list[NixTarget]) -> None:
        from pytest_ocibuild.nix.evaluate import known_drv_paths

        groups: dict[tuple[str, ...], list[NixTarget]] = {}
        for t in targets:
            groups.setdefault(tuple(NixTarget(t.file, None, t.args, t.argstrs).argv()),
                              []).append(t)
        for members in groups.values():
            first = members[0]
            attrs = sorted({t.attr for t in members if t.attr})
            try:
                found = known_drv_paths(first.file or "", attrs, args=dict(first.args),
                                        argstrs=dict(first.argstrs),
                                        store_root=self.eval_store)
            except Exception:  # only a shortcut: instantiate evaluates and reports
                continue
            with self._lock:
                for t in members:
                    if t.attr in found:
                        self._drvs[tuple(t.argv())] = found[t.attr]

    def build(self, target: NixTarget) -> NixBuildResult:
        """Build ``target`` in our sandbox; raises BuildFailed or NixError."""
        drv_path = self.instantiate(target)
        builder = self.builder()
        if target.drv is not None:
            builder = _with_root(builder, "/")
        outputs = builder.build(drv_path)
        return NixBuildResult(drv_path, dict(outputs), builder.executor.store)

    def outcome(self, target: NixTarget) -> NixBuildResult | OcibuildError:
        """Our build, or why there is none."""
        try:
            return self.build(target)
        except OcibuildError as e:
            return e

    def nix_build(self, target: NixTarget) -> Result:
        """Build ``target`` with the real nix-build (in Nix's sandbox)."""
        return run_nix_build(target.argv(), cwd=self.config.rootpath)

    def compare(self, target: NixTarget,
                ours: NixBuildResult | OcibuildError | None = None) -> NixComparison:
        """Build ``target`` with nix-build too (and ours, unless given) and compare."""
        if ours is None:
            ours = self.outcome(target)
        plain = self.side(ours, export=False)
        drv_path = plain.drv_path or (self._drvs.get(tuple(target.argv())) or target.drv)
        if drv_path is not None and not self.no_cache and (
                known := self.verdicts.get(drv_path, plain)) is not None:
            return NixComparison(target, ours, known, [])
        nix = self.nix_build(target)
        differences = compare(self.side(ours), nix_side(nix), nix_stderr=nix.stderr)
        if not differences and drv_path is not None and nix.drv_path in (None, drv_path):
            self.verdicts.put(drv_path, plain, nix)
        return NixComparison(target, ours, nix, differences)

    def side(self, ours: NixBuildResult | OcibuildError, *, export: bool = True) -> Side:
        """Our outcome in the comparison's terms (with ``export``, the outputs are written
        out as files, so the comparison can diff them)."""
        from pytest_ocibuild.plugin.nixdiff import OutputInfo

        if isinstance(ours, OcibuildError):
            return Side(error=ours.message, detail=ours.detail)
        base = self.work_dir / "exports" / str(next(self._exports))
        side = Side(drv_path=ours.drv_path)
        for name, info in ours.outputs.items():
            side.outputs[name] = OutputInfo(info.path, info.nar_hash.sri, info.nar_size,
                                            sorted(info.references))
            if export:
                side.trees[name] = ours.export(name, base / name)
        return side


def _with_root(builder: NixBuilder, root: str) -> NixBuilder:
    """A builder sharing ``builder``'s executor and state that reads .drv files under ``root``."""
    from pytest_ocibuild.nix.build import NixBuilder

    return NixBuilder(builder.executor, builder.results.root.parent, settings=builder.settings,
                      store_root=root)


NIX_SESSION_KEY = pytest.StashKey[NixSession]()


def get_nix_session(config: pytest.Config) -> NixSession:
    """The NixSession of this pytest process (created on first use)."""
    session = config.stash.get(NIX_SESSION_KEY, None)
    if session is None:
        session = config.stash[NIX_SESSION_KEY] = NixSession(config)
    return session


class NixBuild:
    """What the ``nix_build`` fixture gives a test. Targets are a ``.nix`` file (relative to
    the rootdir) with ``attr``, ``args`` (name → Nix expression, or a Path) and ``argstrs``,
    or a ``/nix/store/….drv`` path."""

    def __init__(self, session: NixSession) -> None:
        self.session = session

    @property
    def bbdir(self) -> Path:
        """A session directory holding only a copy of /bin/busybox: ``args={"bbdir": ...}``."""
        return self.session.bbdir

    def target(self, file: str | Path, attr: str | None = None, *,
               args: Mapping[str, str | Path] | None = None,
               argstrs: Mapping[str, str] | None = None) -> NixTarget:
        """A NixTarget: ``file`` may be a ``.drv`` path (then no attr or args)."""
        text = str(file)
        if text.endswith(".drv"):
            if attr or args or argstrs:
                raise ValueError("attr, args and argstrs apply to .nix files, not to a .drv")
            return NixTarget(drv=os.path.realpath(text) if not text.startswith("/nix/store/")
                             else text)
        path = Path(file)
        if not path.is_absolute():
            path = self.session.config.rootpath / path
        return NixTarget(file=path, attr=attr,
                         args={k: str(v) for k, v in (args or {}).items()},
                         argstrs=dict(argstrs or {}))

    def build(self, file: str | Path, attr: str | None = None, *,
              args: Mapping[str, str | Path] | None = None,
              argstrs: Mapping[str, str] | None = None) -> NixBuildResult:
        """Build in our sandbox; raises BuildFailed (or NixError for evaluation problems)."""
        return self.session.build(self.target(file, attr, args=args, argstrs=argstrs))

    __call__ = build

    def compare(self, file: str | Path, attr: str | None = None, *,
                args: Mapping[str, str | Path] | None = None,
                argstrs: Mapping[str, str] | None = None) -> NixComparison:
        """Build both ways (ours and nix-build) and compare; see ``NixComparison``."""
        return self.session.compare(self.target(file, attr, args=args, argstrs=argstrs))

    def assert_same_as_nix(self, file: str | Path, attr: str | None = None, *,
                           args: Mapping[str, str | Path] | None = None,
                           argstrs: Mapping[str, str] | None = None) -> NixComparison:
        """``compare``, failing the test with the difference report when they disagree."""
        result = self.compare(file, attr, args=args, argstrs=argstrs)
        if not result.agree:
            pytest.fail(result.report(self.session.config.rootpath), pytrace=False)
        return result


@pytest.fixture
def nix_build(pytestconfig: pytest.Config) -> NixBuild:
    """Build Nix derivations in the OCI sandbox and compare them with nix-build.

    ``nix_build.build(file, attr, args=..., argstrs=...)`` (or a ``.drv`` path) returns a
    ``NixBuildResult`` (``.path``, ``.references``, ``.nar_hash``, ``.tree``, ``.read`` per
    output); ``.compare(...)`` returns a ``NixComparison`` (``.agree``, ``.differences``,
    ``.report()``); ``.assert_same_as_nix(...)`` fails the test with the report.
    ``nix_build.bbdir`` is a directory holding only a copy of /bin/busybox.
    """
    return NixBuild(get_nix_session(pytestconfig))


COMPARE_NIX_HELP = ("also build every Nix case with nix-build and fail when they disagree "
                    "(as if each said compare: nix)")


def add_nix_options(parser: pytest.Parser) -> None:
    """``--ocibuild-compare-nix`` and its ini twin ``ocibuild_compare_nix``."""
    group = parser.getgroup("ocibuild", "sandboxed OCI builds (pytest-ocibuild)")
    group.addoption("--ocibuild-compare-nix", action="store_true", default=None,
                    dest="ocibuild_compare_nix", help=COMPARE_NIX_HELP)
    parser.addini("ocibuild_compare_nix", f"{COMPARE_NIX_HELP} (default: false)",
                  default="false")


def compare_all(config: pytest.Config) -> bool:
    """Whether every Nix case is compared with nix-build."""
    value = config.getoption("ocibuild_compare_nix", None)
    if value is None:
        value = config.getini("ocibuild_compare_nix")
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise pytest.UsageError(f"ocibuild_compare_nix: {value!r} is not a boolean (true/false)")
