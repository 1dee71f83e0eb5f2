"""Reproducibility: the same target gives the same digests and byte-identical blobs."""

from __future__ import annotations

import gzip
import json
import random
import tarfile
from pathlib import Path

from pytest_ocibuild.image.export import Options, export_image, layer_cache
from tests.image.conftest import Built, CliImage, cli_image, make_items, store_path


def files(layout: Path) -> dict[str, bytes]:
    return {p.relative_to(layout).as_posix(): p.read_bytes()
            for p in sorted(layout.rglob("*")) if p.is_file()}


def test_two_cli_exports_in_fresh_stores_are_byte_identical(
        app_image: CliImage, built: Built, tmp_path: Path) -> None:
    """A second store builds app from scratch and exports it: same manifest, same bytes."""
    pop = app_image.out.parent / "popularity.json"
    again = cli_image(tmp_path, tmp_path / "store", built.bbdir, built.app_cmd(),
                      "--max-layers", "3", "--popularity", str(pop))
    assert again.doc["manifest"] == app_image.doc["manifest"]
    assert again.doc["layers"] == app_image.doc["layers"]
    assert again.doc["made"] == 3  # nothing was cached in the fresh store
    assert files(again.out) == files(app_image.out)
    assert again.archive.read_bytes() == app_image.archive.read_bytes()


def test_a_repeated_export_makes_nothing_and_gives_the_same_image(
        app_image: CliImage, built: Built, tmp_path: Path) -> None:
    pop = app_image.out.parent / "popularity.json"
    again = cli_image(tmp_path, built.store_dir, built.bbdir, built.app_cmd(),
                      "--max-layers", "3", "--popularity", str(pop))
    assert again.doc["made"] == 0
    assert files(again.out) == files(app_image.out)


def test_layer_tars_are_normalised(app_image: CliImage) -> None:
    """Sorted entries, parents first, mtime 1, owner 0:0 without names, Nix store modes,
    and a gzip header without a timestamp or a file name."""
    for layer in app_image.doc["layers"]:
        blob = app_image.out / "blobs" / "sha256" / layer["digest"].split(":")[1]
        header = blob.read_bytes()[:10]
        assert header[3] == 0 and header[4:8] == b"\0\0\0\0"  # no FNAME, mtime 0
        with gzip.open(blob) as f, tarfile.open(fileobj=f) as tar:
            members = tar.getmembers()
        assert [m.name for m in members][:2] == ["nix", "nix/store"]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (1, 0, 0, "", "")
            if m.isdir():
                assert m.mode == (0o755 if m.name in ("nix", "nix/store") else 0o555)
            elif m.isfile():
                assert m.mode in (0o444, 0o555)
        tops = [m.name for m in members if m.name.count("/") == 2]
        assert tops == sorted(tops)


def test_item_order_and_workers_do_not_change_the_image(store, tmp_path: Path) -> None:
    graph = {f"p{i}": [f"p{j}" for j in range(i) if (i + j) % 3 == 0] for i in range(12)}
    items = make_items(store, tmp_path / "trees", graph, sizes={f"p{i}": 5000 * i
                                                                 for i in range(12)},
                       random=True)
    roots = [store_path("p11"), store_path("p10"), store_path("p7")]
    pop = {f"p{i}": 100 * (i % 4) for i in range(12)}
    digests = set()
    for n in range(3):
        keys = list(items)
        random.Random(n).shuffle(keys)
        shuffled = {k: items[k] for k in keys}
        done = export_image(layer_cache(store, tmp_path / f"s{n}"), shuffled, roots[::-1]
                            if n else roots, tmp_path / f"oci{n}",
                            Options(max_layers=4, popularity=pop, workers=n + 1))
        digests.add(done.image.manifest)
    assert len(digests) == 1
    assert files(tmp_path / "oci0") == files(tmp_path / "oci1") == files(tmp_path / "oci2")
    index = json.loads((tmp_path / "oci0" / "index.json").read_bytes())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name":
                                                    "latest"}
