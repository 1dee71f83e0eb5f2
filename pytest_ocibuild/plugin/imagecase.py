"""Image cases and the ``ocibuild_image`` fixture: a case's outputs exported as an OCI image.

    deps-sources-image:
      nix: {file: ../nix/default.nix, attr: deps.sources, bbdir: auto}
      image:
        popularity: {busybox-dir: 100}
        cmd: ["@busybox-dir@/busybox", cat, "@out@"]
        layers: [[busybox-dir], [dep-sources, note.txt]]
        stdout: ["^a note$"]

``image:`` goes on a Nix case (the image is the outputs' runtime closure under /nix/store) or
on a build case (its outputs at ``/<output path>``). After the case's own checks the item
exports the image (``<store>/image`` is the layer cache), compares its layers (bottom first,
each the sorted names of its paths) and runs ``run`` (default: ``cmd``) inside it with runc,
matching ``stdout``/``stderr`` and ``exit_code``. ``@NAME@`` in ``cmd``, ``run`` and ``env``
is the path of output NAME or of the closure path named NAME. Documented in docs/image.md.
"""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_ocibuild.plugin.runner import get_runner

if TYPE_CHECKING:  # the rest is imported when an image case or the fixture is used
    from pytest_ocibuild.image.layering import Item
    from pytest_ocibuild.image.run import Ran
    from pytest_ocibuild.plugin.check import Problem
    from pytest_ocibuild.plugin.schema import Lines

MAX_LAYERS = 125  # image.layering.MAX_LAYERS

PLACEHOLDER = re.compile(r"@([A-Za-z0-9+._?=/-]+)@")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSpec:
    """The ``image:`` key of a case."""

    max_layers: int = 94
    popularity: Mapping[str, int] = field(default_factory=dict)
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    layers: int | tuple[tuple[str, ...], ...] | None = None
    stdout: tuple[re.Pattern[str], ...] = ()
    stderr: tuple[re.Pattern[str], ...] = ()
    exit_code: int | None = None

    @property
    def runs(self) -> bool:
        return bool(self.run or self.stdout or self.stderr or self.exit_code is not None)


def parse_image(body: Mapping[str, Any]) -> ImageSpec:
    """The ``image`` mapping of a case; raises case._Problem citing ``image.KEY``."""
    from pytest_ocibuild.plugin.case import _Problem, _regexes
    from pytest_ocibuild.plugin.schema import IMAGE_SCHEMA, schema_errors

    wrapper = {"type": "object", "properties": {"image": IMAGE_SCHEMA}}
    for where, message in schema_errors({"image": body}, wrapper):
        raise _Problem(where, message)
    if body.get("max_layers", 1) > MAX_LAYERS:
        raise _Problem(("image", "max_layers"), f"image.max_layers: at most {MAX_LAYERS}")
    layers = body.get("layers")
    spec = ImageSpec(
        max_layers=body.get("max_layers", 94), popularity=dict(body.get("popularity", {})),
        cmd=tuple(body.get("cmd", ())), env=tuple(body.get("env", ())),
        run=tuple(body.get("run", ())),
        layers=layers if isinstance(layers, int | None) else tuple(
            tuple(sorted(lay)) for lay in layers),
        stdout=_regexes(body.get("stdout", []), ("image", "stdout")),
        stderr=_regexes(body.get("stderr", []), ("image", "stderr")),
        exit_code=body.get("exit_code"))
    if spec.runs and not (spec.run or spec.cmd):
        raise _Problem(("image",), "image: give cmd or run, the command to run in the image")
    for e in spec.env:
        if "=" not in e or e.startswith("="):
            raise _Problem(("image", "env"), f"image.env: {e!r} is not K=V")
    return spec


@dataclass(frozen=True, slots=True)
class ImageCase:
    """A case (build or Nix) with an ``image:`` key."""

    inner: Any  # case.Case or nixcase.NixCase
    image: ImageSpec
    is_image = True

    def __getattr__(self, name: str) -> Any:  # name, path, line, marks... of the inner case
        return getattr(self.inner, name)


def parse_image_case(name: str, body: dict[str, Any], path: Path, lines: Lines) -> ImageCase:
    """A case whose body has ``image``; the rest is parsed as the case it would be without."""
    from pytest_ocibuild.plugin.case import _parse_case, _Problem

    if not isinstance(body["image"], dict):
        raise _Problem(("image",), "image: expected a mapping")
    image = parse_image(body["image"])
    rest = {k: v for k, v in body.items() if k != "image"}
    if "nix" in rest:
        from pytest_ocibuild.plugin.nixcase import parse_nix_case

        inner: Any = parse_nix_case(name, rest, path, lines)
    else:
        inner = _parse_case(name, rest, path, lines)
    if inner.expect.failure is not None:
        raise _Problem(("image",), "a case that expects a failure has no image")
    return ImageCase(inner, image)


# --- exporting and checking ------------------------------------------------------------------


@dataclass
class ExportedImage:
    """An image written by ``ocibuild_image`` or an image case."""

    layout: Path  # OCI image layout (tag ``latest``)
    manifest: str  # sha256 hex
    layers: list[list[str]]  # bottom first: each layer's path names, sorted
    made: int  # layers written now (the others were in the store's layer cache)
    paths: dict[str, str]  # @NAME@ -> path
    work: Path

    def run(self, args: Sequence[str] = (), *, timeout: float = 60.0) -> Ran:
        """Run ``args`` (``@NAME@`` expanded; default: the image's Cmd) in the image."""
        from pytest_ocibuild.image.run import run_image

        return run_image(self.layout, self.work, expand(args, self.paths), timeout=timeout)


def expand(words: Sequence[str], paths: Mapping[str, str]) -> list[str]:
    """``@NAME@`` -> ``paths[NAME]`` in each word (unknown names are left alone)."""
    return [PLACEHOLDER.sub(lambda m: paths.get(m.group(1), m.group(0)), w) for w in words]


def export(store_dir: Path, store: Any, items: Mapping[str, Item], roots: Sequence[str],
           out: Path, *, names: Mapping[str, str], max_layers: int = 94,
           popularity: Mapping[str, int] | None = None, cmd: Sequence[str] = (),
           env: Sequence[str] = ()) -> ExportedImage:
    """Export ``items`` into ``out``; ``names`` (e.g. output names) add to @NAME@."""
    from pytest_ocibuild.image.export import Options, export_image, layer_cache
    from pytest_ocibuild.image.layering import package_name

    paths = {package_name(p): p for p in items} | dict(names)
    if out.exists():
        shutil.rmtree(out)
    done = export_image(layer_cache(store, store_dir), items, roots, out, Options(
        max_layers=max_layers, popularity=dict(popularity or {}), cmd=expand(cmd, paths),
        env=expand(env, paths)))
    layers = [sorted(package_name(p) for p in lay.contents) for lay in done.layers]
    return ExportedImage(out, done.image.manifest, layers, done.made, paths,
                         out.parent / f"{out.name}.run")


def can_run() -> str | None:
    """Why a command cannot be run in an image here, or None."""
    if shutil.which("runc") is None:
        return "running a command in an image needs runc (apt-get install runc)"
    return None


def check_image(spec: ImageSpec, image: ExportedImage) -> list[Problem]:
    """Everything about ``image`` (and the command run in it) that contradicts ``spec``."""
    from pytest_ocibuild.plugin.check import Problem

    problems = []
    got = image.layers
    if isinstance(spec.layers, int) and len(got) != spec.layers:
        problems.append(Problem(f"the image has {len(got)} layers, expected {spec.layers}",
                                "layers (bottom first)", [" ".join(lay) for lay in got]))
    elif isinstance(spec.layers, tuple) and [tuple(lay) for lay in got] != list(spec.layers):
        problems.append(Problem(
            "the image's layers differ from the expected ones",
            "layers, bottom first (- expected, + actual)",
            [f"- {' '.join(lay)}" for lay in spec.layers] + [f"+ {' '.join(lay)}"
                                                            for lay in got]))
    if not spec.runs:
        return problems
    why = can_run()
    if why is not None:
        if problems:
            return problems  # a wrong layering fails even where nothing can run
        pytest.skip(why)
    ran = image.run(spec.run)
    want = 0 if spec.exit_code is None else spec.exit_code
    if ran.exit_code != want:
        problems.append(Problem(f"the command in the image exited {ran.exit_code}, "
                                f"expected {want}", "its stderr",
                                ran.stderr.splitlines()[-25:]))
    for stream, patterns in (("stdout", spec.stdout), ("stderr", spec.stderr)):
        text = getattr(ran, stream)
        missing = [p.pattern for p in patterns if not p.search(text)]
        if missing:
            problems.append(Problem(f"the command's {stream} does not match {missing}",
                                    f"its {stream}", text.splitlines()[-25:]))
    return problems


# --- collection ------------------------------------------------------------------------------


def image_case_item(parent: pytest.Collector, case: ImageCase) -> pytest.Item:
    """The item of an image case: a Nix or a build case item that then checks the image."""
    from pytest_ocibuild.plugin.collect import InvalidCaseItem

    cls = _item_class(bool(getattr(case.inner, "is_nix", False)))
    try:
        return cls.from_parent(parent, name=case.name, case=case.inner, image=case.image)
    except pytest.fail.Exception as e:  # an unregistered mark under --strict-markers
        message = f"{case.path}:{case.line}: case {case.name!r}: {e.msg}"
        return InvalidCaseItem.from_parent(parent, name=case.name, message=message,
                                           line=case.line)


@functools.cache
def _item_class(nix: bool) -> type[pytest.Item]:
    """The item class of image cases, made on first use (the case modules load late)."""
    from pytest_ocibuild.plugin.collect import CaseFailure, CaseItem

    if nix:
        from pytest_ocibuild.plugin.nixcase import NixCaseItem as base
    else:
        base = CaseItem

    class ImageCaseItem(base):  # type: ignore[misc,valid-type]
        """A case with ``image:``: its own checks, then the image's."""

        def __init__(self, *, image: ImageSpec, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.image = image

        def runtest(self) -> None:
            super().runtest()
            runner = get_runner(self.config)
            out = runner.work_dir / "images" / f"{self.case.path.stem}--{self.case.name}"
            if nix:
                from pytest_ocibuild.plugin.nixbuild import get_nix_session

                session = get_nix_session(self.config)
                image = export_nix(session, self.case.target(session), out, self.image)
            else:
                image = export_build(self.config, runner.build(self.case), out, self.image)
            problems = check_image(self.image, image)
            if problems:
                raise CaseFailure(problems, None, build_failed=False)

    ImageCaseItem.__name__ = ImageCaseItem.__qualname__ = (
        "ImageNixCaseItem" if nix else "ImageCaseItem")
    return ImageCaseItem


def export_build(config: pytest.Config, build: Any, out: Path, spec: ImageSpec) -> ExportedImage:
    """Export the outputs of a finished build case at ``/<output path>``."""
    from pytest_ocibuild.image.layering import Item
    from pytest_ocibuild.image.targets import tree_size

    runner = get_runner(config)
    store = runner.store()
    items = {"/" + o: Item("/" + o, n, tree_size(store, n))
             for o, n in zip(build.request.outputs, build.outputs, strict=True)}
    names = {o: "/" + o for o in build.request.outputs}
    return export(runner.store_dir, store, items, sorted(items), out, names=names,
                  max_layers=spec.max_layers, popularity=spec.popularity, cmd=spec.cmd,
                  env=spec.env)


def export_nix(session: Any, target: Any, out: Path, spec: ImageSpec) -> ExportedImage:
    """Build ``target`` in the Nix session and export its runtime closure."""
    from pytest_ocibuild.image.targets import runtime_closure

    result = session.build(target)
    builder = session.builder()
    roots = sorted(i.path for i in result.outputs.values())
    items = runtime_closure(builder, result.drv_path, roots)
    runner = get_runner(session.config)
    names = {o: i.path for o, i in result.outputs.items()}
    return export(runner.store_dir, builder.executor.store, items, roots, out, names=names,
                  max_layers=spec.max_layers, popularity=spec.popularity, cmd=spec.cmd,
                  env=spec.env)


class ImageExporter:
    """What the ``ocibuild_image`` fixture gives a test."""

    def __init__(self, config: pytest.Config, work: Path) -> None:
        self.config = config
        self.work = work
        self._count = 0

    def nix(self, file: str | Path, attr: str | None = None, *,
            args: Mapping[str, str | Path] | None = None,
            argstrs: Mapping[str, str] | None = None, max_layers: int = 94,
            popularity: Mapping[str, int] | None = None, cmd: Sequence[str] = (),
            env: Sequence[str] = ()) -> ExportedImage:
        """Build a Nix target (as ``nix_build`` does) and export its runtime closure."""
        from pytest_ocibuild.plugin.nixbuild import NixBuild, get_nix_session

        session = get_nix_session(self.config)
        target = NixBuild(session).target(file, attr, args=args, argstrs=argstrs)
        self._count += 1
        spec = ImageSpec(max_layers=max_layers, popularity=dict(popularity or {}),
                         cmd=tuple(cmd), env=tuple(env))
        return export_nix(session, target, self.work / f"image-{self._count}", spec)


@pytest.fixture
def ocibuild_image(pytestconfig: pytest.Config, tmp_path: Path) -> ImageExporter:
    """Export Nix closures as layered OCI images and run commands in them.

    ``ocibuild_image.nix(file, attr, args=..., max_layers=..., popularity=..., cmd=[...])``
    returns an ``ExportedImage`` (``.layout``, ``.manifest``, ``.layers``, ``.run(args)``);
    ``@NAME@`` in ``cmd`` and ``run`` is the path of output or closure path NAME.
    """
    return ImageExporter(pytestconfig, tmp_path)
