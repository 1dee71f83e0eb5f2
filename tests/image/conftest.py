"""Synthetic closures for the image tests: store paths with real trees in a LocalStore."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.image.layering import Item
from pytest_ocibuild.nix.closure import PathInfo


def store_path(name: str) -> str:
    """A /nix/store path for ``name`` (32 hex characters stand in for the hash part)."""
    return f"/nix/store/{hashlib.sha256(name.encode()).hexdigest()[:32]}-{name}"


def make_items(store: LocalStore, work: Path, graph: Mapping[str, Sequence[str]], *,
               sizes: Mapping[str, int] | None = None, random: bool = False) -> dict[str, Item]:
    """Items for ``graph`` (name -> names it refers to): each a directory with one file of
    ``sizes[name]`` bytes (default 16; random bytes if ``random``) naming its references."""
    items = {}
    for name, refs in graph.items():
        d = work / name
        d.mkdir(parents=True)
        n = (sizes or {}).get(name, 16)
        data = (hashlib.shake_256(name.encode()).digest(n) if random else b"x" * n)
        (d / "data").write_bytes(data)
        (d / "refs").write_text("".join(store_path(r) + "\n" for r in refs))
        node = ingest_path(store, d)
        p = store_path(name)
        items[p] = Item(p, node, n, tuple(sorted(store_path(r) for r in refs)))
    return items


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# --- real builds -----------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
APP_OUTPUT = "hello from app: ab shared\n"
CLOSURE_NIX = HERE / "closure.nix"


@dataclass
class Built:
    """``tests/image/closure.nix`` built by our Nix builder into ``store_dir``."""

    store_dir: Path
    store: LocalStore
    bbdir: Path
    closures: dict[str, tuple[dict[str, Item], list[str], dict[str, PathInfo]]]

    def items(self, *attrs: str) -> tuple[dict[str, Item], list[str]]:
        """The union of the closures of ``attrs`` and their top-level paths."""
        items: dict[str, Item] = {}
        roots: list[str] = []
        for a in attrs:
            its, rts, _ = self.closures[a]
            items.update(its)
            roots += rts
        return items, sorted(set(roots))

    def infos(self, attr: str) -> dict[str, PathInfo]:
        return self.closures[attr][2]

    def app_cmd(self) -> str:
        """The command line of app's ``bin/hello`` (it prints APP_OUTPUT)."""
        return self.closures["app"][1][0] + "/bin/hello"


def build_closures(store_dir: Path, bbdir: Path, attrs: Sequence[str]) -> Built:
    """Build ``attrs`` of closure.nix and give each one's runtime closure as image items."""
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.image.targets import runtime_closure
    from pytest_ocibuild.nix.build import NixBuilder
    from pytest_ocibuild.nix.closure import DrvGraph
    from pytest_ocibuild.nix.evaluate import instantiate
    from pytest_ocibuild.nix.to_request import NixSettings

    evs = store_dir.parent / "eval"
    ex = open_executor(store=store_dir, max_parallel=2)
    builder = NixBuilder(ex, store_dir / "nix", settings=NixSettings(cores=2), store_root=evs)
    closures = {}
    for attr in attrs:
        drv = instantiate(CLOSURE_NIX, attr=attr, args={"bbdir": str(bbdir)}, store_root=evs)
        outputs = builder.build(drv)
        roots = sorted(i.path for i in outputs.values())
        items = runtime_closure(builder, drv, roots)
        infos = {}
        graph = DrvGraph(drv, builder.store_root)
        for p in graph.order:
            infos.update((i.path, i) for i in builder.results.get(p).values())
        srcs = {s for p in graph.order for s in graph.drvs[p].input_srcs}
        infos.update(builder.sources.get(sorted(srcs - set(infos))))
        closures[attr] = (items, roots, {p: infos[p] for p in items})
    return Built(store_dir, LocalStore(store_dir), bbdir, closures)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, bbdir: Path) -> Built:
    """closure.nix's ``app`` and ``tool``, built once per session (real runc builds)."""
    if shutil.which("nix-instantiate") is None or shutil.which("runc") is None \
            or os.geteuid() != 0:
        pytest.skip("needs Nix, runc and root")
    return build_closures(tmp_path_factory.mktemp("img") / "store", bbdir, ["app", "tool"])


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``ocibuild ARGV`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pytest_ocibuild", *argv], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)


@dataclass
class CliImage:
    """``ocibuild image`` of closure.nix's ``app``: its layout, archive and --json output."""

    out: Path
    archive: Path
    doc: dict
    store_dir: Path


def cli_image(work: Path, store_dir: Path, bbdir: Path, cmd: str, *extra: str) -> CliImage:
    out, archive = work / "oci", work / "image.tar"
    res = run_cli("image", "--store", str(store_dir), "--json", "--out", str(out),
                  "--docker-archive", str(archive), "--cmd", cmd, "--env", "GREETING=hi",
                  str(CLOSURE_NIX), "-A", "app", "--arg", "bbdir", str(bbdir), *extra)
    assert res.returncode == 0, res.stderr
    return CliImage(out, archive, json.loads(res.stdout), store_dir)


@pytest.fixture(scope="session")
def app_image(tmp_path_factory: pytest.TempPathFactory, built: Built) -> CliImage:
    """The CLI's image of ``app`` (3 layers, every path popular) over the ``built`` store."""
    work = tmp_path_factory.mktemp("app-image")
    pop = work / "popularity.json"
    pop.write_text(json.dumps({i.name: 1000 for i in built.items("app")[0].values()}))
    return cli_image(work, built.store_dir, built.bbdir, built.app_cmd(), "--max-layers", "3",
                     "--popularity", str(pop))
