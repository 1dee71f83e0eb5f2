"""The layer cache is counted by image_df and collected by image_gc."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pytest_ocibuild.image.export import Options, export_image, layer_cache
from pytest_ocibuild.image.gc import image_df, image_gc
from pytest_ocibuild.image.run import read_image
from tests.image.conftest import make_items, store_path

GRAPH = {"app": ["lib"], "lib": [], "tool": ["lib"]}


def test_df_counts_and_gc_collects_by_age(store, tmp_path: Path) -> None:
    items = make_items(store, tmp_path / "trees", GRAPH, sizes={"lib": 30_000}, random=True)
    cache = layer_cache(store, tmp_path / "s")
    opts = Options(popularity={"lib": 100})
    app = export_image(cache, items, [store_path("app")], tmp_path / "app", opts)
    tool = export_image(cache, items, [store_path("tool")], tmp_path / "tool", opts)
    assert (app.made, tool.made) == (2, 1)  # lib's layer is shared
    df = image_df(cache.root)
    assert df["image-layers"]["count"] == df["image-records"]["count"] == 3
    assert df["image-blobs"]["count"] == 4  # two configs, two manifests
    assert df["image-layers"]["bytes"] == sum(w.size for w in {*app.image.layers,
                                                               *tool.image.layers})
    # young files are spared
    assert image_gc(cache.root).to_dict()["blobs_removed"] == 0
    (cache.tmp / "layer.1-dead.0").write_bytes(b"half a layer")
    past = time.time() - 3600
    for f in [*cache.blobs.iterdir(), *cache.tmp.iterdir(), *cache.records.iterdir()]:
        os.utime(f, (past, past))
    # no budget: the unrecorded blobs and stale staging go, every layer stays
    report = image_gc(cache.root)
    assert (report.records_kept, report.blobs_removed, report.staging_removed) == (3, 4, 1)
    assert set(image_df(cache.root)) == {"image-layers", "image-records"}
    # the exported layouts do not depend on the cache
    read_image(tmp_path / "app")
    # a use refreshes a record: tool's layers were just used, app's own layer was not
    again = export_image(cache, items, [store_path("tool")], tmp_path / "tool2", opts)
    assert again.made == 0
    report = image_gc(cache.root, max_age=600, grace=0)
    assert (report.records_kept, report.records_removed) == (2, 1)
    assert report.bytes_freed > 0
    assert export_image(cache, items, [store_path("app")], tmp_path / "app2", opts).made == 1
    # a size budget keeps the most recently used layers that fit
    report = image_gc(cache.root, max_size=0, grace=0)
    assert report.records_kept == 0 and image_df(cache.root) == {}
