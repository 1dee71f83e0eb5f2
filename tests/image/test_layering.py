"""Nixery's layering: dominator subtrees, popularity x size merge order, the budget."""

from __future__ import annotations

import gzip
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_ocibuild.errors import InvalidRequest
from pytest_ocibuild.image.export import Options, export_image, layer_cache
from pytest_ocibuild.image.layering import BIG, group_layers
from pytest_ocibuild.image.popularity import load_popularity, store_popularity
from tests.image.conftest import Built, make_items, store_path

DIAMOND = {"app": ["liba", "libb"], "liba": ["shared"], "libb": ["shared"], "shared": []}


def names(layers: list) -> list[set[str]]:
    return [{p.rsplit("-", 1)[1] for p in lay.contents} for lay in layers]


def test_one_root_dominates_its_whole_closure(store, tmp_path: Path) -> None:
    items = make_items(store, tmp_path, DIAMOND)
    assert names(group_layers(items, [store_path("app")])) == [
        {"app", "liba", "libb", "shared"}]


def test_a_popular_path_is_a_subtree_of_its_own(store, tmp_path: Path) -> None:
    items = make_items(store, tmp_path, DIAMOND)
    layers = group_layers(items, [store_path("app")], popularity={"shared": 100})
    assert sorted(map(sorted, names(layers))) == [["app", "liba", "libb"], ["shared"]]
    # just under the threshold it is not
    layers = group_layers(items, [store_path("app")], popularity={"shared": 99})
    assert len(layers) == 1


def test_a_path_two_subtrees_share_is_dominated_by_the_root(store, tmp_path: Path) -> None:
    """liba and libb are popular: shared, reached from both, belongs to neither."""
    graph = {**DIAMOND, "shared": ["leaf"], "leaf": [], "liba": ["shared", "only-a"],
             "only-a": []}
    items = make_items(store, tmp_path, graph)
    layers = group_layers(items, [store_path("app")], popularity={"liba": 500, "libb": 500})
    assert sorted(map(sorted, names(layers))) == [
        ["a", "liba"], ["app"], ["leaf", "shared"], ["libb"]]  # only-a sorts as "a"


def test_a_big_path_is_a_subtree_of_its_own(store, tmp_path: Path) -> None:
    items = make_items(store, tmp_path, DIAMOND)
    p = store_path("libb")
    items[p] = replace(items[p], size=BIG + 1)
    # (its closure too is big; shared, reached from app and libb, is the root's)
    assert sorted(map(sorted, names(group_layers(items, [store_path("app")])))) == [
        ["app", "liba"], ["libb"], ["shared"]]


# (popularity, size): ratings C 1000 < E 3000 < H 3300 < B 4000 < A 5000 < D 6000 < F 10000
# < G 20000, an order that is neither the names', nor the sizes', nor the popularities'.
PACKAGES = {"A": (100, 50), "B": (400, 10), "C": (100, 10), "D": (200, 30), "E": (150, 20),
            "F": (100, 100), "G": (1000, 20), "H": (300, 11)}


def packages(store, tmp_path: Path) -> tuple[dict, list[str], dict[str, int]]:
    items = make_items(store, tmp_path, {n: [] for n in PACKAGES})
    for n, (_pop, size) in PACKAGES.items():
        items[store_path(n)] = replace(items[store_path(n)], size=size)
    return items, sorted(items), {n: pop for n, (pop, _s) in PACKAGES.items()}


@pytest.mark.parametrize(("budget", "expected"), [
    (8, [{"C"}, {"E"}, {"H"}, {"B"}, {"A"}, {"D"}, {"F"}, {"G"}]),
    (7, [{"C", "E"}, {"H"}, {"B"}, {"A"}, {"D"}, {"F"}, {"G"}]),
    (3, [{"C", "E", "H", "B", "A", "D"}, {"F"}, {"G"}]),
    (1, [set(PACKAGES)]),
])
def test_lowest_popularity_times_size_is_merged_first(store, tmp_path: Path, budget: int,
                                                      expected: list[set[str]]) -> None:
    items, roots, pop = packages(store, tmp_path)
    layers = group_layers(items, roots, popularity=pop, budget=budget)
    assert [{p.rsplit("-", 1)[1] for p in lay.contents} for lay in layers] == expected
    assert sum(lay.rating for lay in layers) == sum(p * s for p, s in PACKAGES.values())


def test_closure_larger_than_the_budget_is_merged_down_to_it(store, tmp_path: Path) -> None:
    items, roots, pop = packages(store, tmp_path)
    done = export_image(layer_cache(store, tmp_path / "s"), items, roots, tmp_path / "oci",
                        Options(max_layers=3, popularity=pop))
    manifest = json.loads((tmp_path / "oci" / "blobs" / "sha256" / done.image.manifest)
                          .read_bytes())
    assert len(manifest["layers"]) == 3
    seen = []
    for lay, desc in zip(done.layers, manifest["layers"], strict=True):
        blob = tmp_path / "oci" / "blobs" / "sha256" / desc["digest"].split(":")[1]
        with gzip.open(blob) as f, tarfile.open(fileobj=f) as tar:
            tops = sorted({"/" + "/".join(m.name.split("/")[:3]) for m in tar
                           if m.name.count("/") >= 2})
        assert tops == sorted(lay.contents)
        seen += tops
    assert sorted(seen) == sorted(items)  # every path in exactly one layer


def test_real_closure_over_the_budget(built: Built, tmp_path: Path) -> None:
    """The built app and tool closures (6 paths, all popular: 6 subtrees) in 3 layers."""
    items, roots = built.items("app", "tool")
    pop = {i.name: 100 for i in items.values()}
    full = group_layers(items, roots, popularity=pop)
    assert len(full) == len(items) == 6
    layers = group_layers(items, roots, popularity=pop, budget=3)
    assert len(layers) == 3
    ranked = sorted(full, key=lambda lay: (lay.rating, lay.contents))
    merged = {p for lay in ranked[:4] for p in lay.contents}
    assert [set(lay.contents) for lay in layers] == [
        merged, set(ranked[4].contents), set(ranked[5].contents)]
    # the biggest path (busybox-dir, ~2 MB) is rated highest and stays alone on top
    assert layers[-1].contents[0].endswith("-busybox-dir")
    # without popularity the two top-level paths are the subtrees; busybox-dir, shared by
    # both, is dominated by the root alone
    plain = group_layers(items, roots)
    assert sorted(len(lay.contents) for lay in plain) == [1, 1, 4]


def test_popularity_counted_from_the_store(built: Built) -> None:
    """A name counts once per recorded output whose closure has it."""
    pop = store_popularity(built.store_dir)
    assert pop["busybox-dir"] == 5  # shared, liba, libb, app, tool
    assert pop["img-shared"] == 4 and pop["img-liba"] == 2 and pop["img-app"] == 1


def test_popularity_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"hello-2.12": 120, "glibc-2.37": 9000}')
    assert load_popularity(good) == {"hello-2.12": 120, "glibc-2.37": 9000}
    for text in ('["hello"]', '{"a": -1}', '{"a": true}', "{"):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InvalidRequest, match=r"bad\.json"):
            load_popularity(bad)


def test_cycles_and_dangling_references_are_refused(store, tmp_path: Path) -> None:
    items = make_items(store, tmp_path, {"a": ["b"], "b": ["a"]})
    with pytest.raises(ValueError, match="cycle"):
        group_layers(items, [store_path("a")])
    items = make_items(store, tmp_path / "2", {"a": ["gone"]})
    with pytest.raises(ValueError, match="not in the closure"):
        group_layers(items, [store_path("a")])
