"""Export: layer a closure, make (or find) its layers, write the image."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pytest_ocibuild.build.atomic import file_lock
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.image.cache import LayerCache
from pytest_ocibuild.image.gc import gc_lock
from pytest_ocibuild.image.layering import DEFAULT_BUDGET, Item, Layer, group_layers
from pytest_ocibuild.image.layout import (
    Image,
    build_image,
    make_config,
    write_docker_archive,
    write_layout,
)


@dataclass
class Options:
    """What ``ocibuild image`` takes besides the target."""

    tag: str = "latest"
    max_layers: int = DEFAULT_BUDGET
    cmd: Sequence[str] = ()
    env: Sequence[str] = ()
    popularity: Mapping[str, int] = field(default_factory=dict)
    docker_archive: Path | None = None
    repo: str = "ocibuild/image"
    workers: int = 2


@dataclass(frozen=True)
class Exported:
    image: Image
    layers: tuple[Layer, ...]
    made: int  # layers written now (the others were in the cache)
    seconds: float


def layer_cache(store: Store, store_dir: Path) -> LayerCache:
    return LayerCache(store, Path(store_dir) / "image")


def export_image(cache: LayerCache, items: Mapping[str, Item], roots: Sequence[str],
                 out: Path | None, opts: Options) -> Exported:
    """Layer ``items`` (the closure of ``roots``), make the layers, write the image to ``out``."""
    start = time.monotonic()
    with file_lock(gc_lock(cache.root), shared=True):  # image_gc waits for exports
        return _export(cache, items, roots, out, opts, start)


def _export(cache: LayerCache, items: Mapping[str, Item], roots: Sequence[str],
            out: Path | None, opts: Options, start: float) -> Exported:
    made_before = cache.made
    layers = group_layers(items, roots, popularity=opts.popularity, budget=opts.max_layers)
    trees = [[(p, items[p].node) for p in layer.contents] for layer in layers]
    with ThreadPoolExecutor(max_workers=max(1, opts.workers),
                            thread_name_prefix="ocibuild-layer") as pool:
        written = list(pool.map(cache.get, trees))
    config = make_config(written, cmd=opts.cmd, env=opts.env)
    image = build_image(cache, written, tag=opts.tag, config=config)
    if out is not None:
        write_layout(cache, image, out)
    if opts.docker_archive is not None:
        tag = opts.tag if ":" in opts.tag else f"{opts.repo}:{opts.tag}"
        write_docker_archive(cache, image, opts.docker_archive, tag)
    return Exported(image, tuple(layers), cache.made - made_before, time.monotonic() - start)
