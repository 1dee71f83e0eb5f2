"""What ``ocibuild image`` names, built (or found recorded) and turned into graph items.

A request file gives one item per output, at ``/<output path>``. A ``.nix`` file or a ``.drv``
gives its outputs and their whole runtime closure under ``/nix/store``, each path with its NAR
size and references: built outputs from the Nix results of the derivation graph, input
sources from the source cache (both as ``ocibuild nix-build`` records them).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.castore.nodes import FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.castore.trees import walk
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.image.layering import Item, package_name


@dataclass
class Target:
    """The image's trees: ``items`` by image path, ``roots`` the top-level ones."""

    store: Store
    items: dict[str, Item]
    roots: list[str]
    name: str  # a repository name for a docker archive


def tree_size(store: Store, node: Node) -> int:
    """Bytes of file contents under ``node``."""
    return sum(n.size for _, n in walk(store, node) if isinstance(n, FileNode))


def repo_name(text: str) -> str:
    """A docker repository name made from ``text`` (lower case, ``[a-z0-9._-]``)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "image"
    return f"ocibuild/{name}"


def is_nix_target(target: str) -> bool:
    return target.endswith((".nix", ".drv")) or os.path.isdir(target)


def request_target(args: argparse.Namespace) -> Target:
    """Build the request file ``args.target`` (or find its result)."""
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.castore.ingest import ingest_path

    executor = open_executor(store=args.store, runtime=args.runtime, inputs=args.inputs,
                             timeout=args.timeout, cache=not args.no_cache,
                             limits=Limits.from_options(args))
    path = Path(args.target)
    request = load_request(path, ingest=lambda p: ingest_path(executor.store, p))
    build = executor.build(request)
    items = {}
    for out, node in zip(request.outputs, build.outputs, strict=True):
        p = "/" + out
        items[p] = Item(p, node, tree_size(executor.store, node))
    return Target(executor.store, items, sorted(items), repo_name(path.stem))


def nix_target(args: argparse.Namespace, store_dir: Path) -> Target:
    """Build the derivation ``args.target`` names (``-A``, ``--arg``, ``--argstr`` for a .nix
    file) as ``ocibuild nix-build`` does, and give its runtime closure."""
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.nix.build import NixBuilder
    from pytest_ocibuild.nix.command import default_jobs, resolve_target, settings_from_nix
    from pytest_ocibuild.nix.evaluate import nix_settings
    from pytest_ocibuild.nix.options import NixOptions

    state = store_dir / "nix"  # shared with nix-build and the plugin
    wait_drv, store_root = resolve_target(args, state, [])
    executor = open_executor(store=store_dir, runtime=args.runtime, inputs=args.inputs,
                             timeout=args.timeout, max_parallel=default_jobs(),
                             cache=not args.no_cache, purge=False,
                             limits=Limits.from_options(args))
    settings = NixOptions().apply(settings_from_nix(), nix_settings())
    drv_path = wait_drv()
    builder = NixBuilder(executor, state, settings=settings, store_root=store_root)
    outputs = builder.build(drv_path)
    roots = sorted(info.path for info in outputs.values())
    items = runtime_closure(builder, drv_path, roots)
    first = outputs.get("out") or outputs[sorted(outputs)[0]]
    return Target(executor.store, items, roots, repo_name(package_name(first.path)))


def runtime_closure(builder: object, drv_path: str, roots: list[str]) -> dict[str, Item]:
    """Items of the runtime closure of ``roots``, outputs of ``drv_path``'s graph."""
    from pytest_ocibuild.nix.build import NixBuilder
    from pytest_ocibuild.nix.closure import DrvGraph, PathInfo, closure

    assert isinstance(builder, NixBuilder)
    graph = DrvGraph(drv_path, builder.store_root)
    infos: dict[str, PathInfo] = {}
    srcs: set[str] = set()
    for p in graph.order:
        recorded = builder.results.get(p)
        if recorded is None:
            raise NixError(f"derivation '{p}' has no recorded outputs")
        infos.update((i.path, i) for i in recorded.values())
        srcs.update(graph.drvs[p].input_srcs)
    for path, info in builder.sources.get(sorted(srcs - set(infos))).items():
        infos.setdefault(path, info)
    return {p: Item(p, infos[p].node, infos[p].nar_size, infos[p].references)
            for p in sorted(closure(roots, infos))}
