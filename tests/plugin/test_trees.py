"""Trees: storing case notation, reading it back, and diffing expected against actual."""

from __future__ import annotations

from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.plugin.case import Entry, parse_tree
from pytest_ocibuild.plugin.trees import actual_tree, diff_trees, put_tree, to_notation

NOTATION = {
    "bin/tool": {"contents": "#!/bin/sh\n", "executable": True},
    "doc/README": "read me\n",
    "empty": {"dir": True},
    "link": {"symlink": "doc/README"},
}


def test_round_trip_through_the_store() -> None:
    store = MemoryStore()
    node = put_tree(store, parse_tree(NOTATION))
    assert to_notation(actual_tree(store, node)) == NOTATION


def test_single_file_root() -> None:
    store = MemoryStore()
    node = put_tree(store, parse_tree({".": {"contents": "x", "executable": True}}))
    assert to_notation(actual_tree(store, node)) == {".": {"contents": "x", "executable": True}}


def test_binary_contents_are_shown_as_digests() -> None:
    store = MemoryStore()
    node = put_tree(store, {"blob": Entry(kind="file", contents=b"\xff\x00")})
    (value,) = to_notation(actual_tree(store, node)).values()
    assert set(value) == {"digest", "size"} and value["size"] == 2


def test_matching_trees_have_no_diff() -> None:
    store = MemoryStore()
    tree = parse_tree(NOTATION)
    assert diff_trees(tree, actual_tree(store, put_tree(store, tree))) == []


def test_diff_names_every_difference() -> None:
    store = MemoryStore()
    actual = actual_tree(store, put_tree(store, parse_tree({
        "bin/tool": "#!/bin/sh\n",  # lost its executable bit
        "doc/README": "read me\nand more\n",  # contents differ
        "extra": "surprise",  # unexpected
        "link": {"symlink": "elsewhere"},  # other target
    })))
    rows = diff_trees(parse_tree(NOTATION), actual)
    text = "\n".join(rows)
    assert "+ bin/tool" in text and "not executable" in text
    assert "contents differ" in text and "+and more" in text  # a unified diff of the text
    assert "+ extra" in text and "unexpected" in text
    assert "- empty" in text and "(missing)" in text
    assert "points to b'elsewhere', expected b'doc/README'" in text
    assert any(r.startswith("  doc ") for r in rows)  # matching entries are listed plainly


def test_kind_mismatch() -> None:
    store = MemoryStore()
    actual = actual_tree(store, put_tree(store, parse_tree({"x": {"dir": True}})))
    assert "is a dir, expected a file" in "\n".join(diff_trees(parse_tree({"x": "1"}), actual))


def test_digest_and_size_expectations() -> None:
    store = MemoryStore()
    actual = actual_tree(store, put_tree(store, parse_tree({"f": "abc"})))
    good = actual["f"].digest
    assert diff_trees({"f": Entry(kind="file", digest=good, size=3)}, actual) == []
    rows = diff_trees({"f": Entry(kind="file", digest="0" * 64, size=4)}, actual)
    assert "contents differ; size 3, expected 4" in "\n".join(rows)
