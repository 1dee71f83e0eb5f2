"""Output trees: read them from the store, write them in case notation, diff expected vs actual.

A tree is ``{relative path: Entry}``; the key ``.`` stands for the root itself when the root is
a file or symlink. In case notation (YAML and ``BuildResult.tree``) a file is its contents (a
string), directories that contain something are implied by their children, and only empty
directories are written (``{dir: true}``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store, put_blob, read_blob
from pytest_ocibuild.castore.trees import walk
from pytest_ocibuild.plugin.case import ROOT, Entry

SHOW_CONTENTS = 4096  # files up to this size have their contents shown in diffs
SHOW_ALL = 40  # trees up to this many entries are listed whole in a diff


def actual_tree(store: Store, node: Node, *, contents: int = SHOW_CONTENTS) -> dict[str, Entry]:
    """The tree under ``node``; files up to ``contents`` bytes carry their contents."""
    out: dict[str, Entry] = {}
    for raw, n in walk(store, node):
        rel = os.fsdecode(raw) or ROOT
        if isinstance(n, DirectoryNode):
            if rel != ROOT:
                out[rel] = Entry(kind="dir")
        elif isinstance(n, FileNode):
            data = read_blob(store, n.digest) if n.size <= contents else None
            out[rel] = Entry(kind="file", contents=data, digest=n.digest.hex, size=n.size,
                             executable=n.executable)
        else:
            out[rel] = Entry(kind="symlink", target=n.target)
    return out


def put_tree(store: Store, tree: Mapping[str, Entry]) -> Node:
    """Write ``tree`` (every file with contents) to ``store``; return its root node."""
    if ROOT in tree:
        return _put_leaf(store, tree[ROOT])
    root: dict[str, Any] = {}
    for rel, e in tree.items():
        *parents, name = rel.split("/")
        level = root
        for p in parents:
            level = level.setdefault(p, {})
        if e.kind == "dir":
            level.setdefault(name, {})
        else:
            level[name] = e
    return _put_dir(store, root)


def _put_dir(store: Store, level: Mapping[str, Any]) -> DirectoryNode:
    directory = Directory({
        name.encode(): _put_dir(store, v) if isinstance(v, dict) else _put_leaf(store, v)
        for name, v in level.items()
    })
    store.put_directory(directory)
    return directory.node()


def _put_leaf(store: Store, e: Entry) -> Node:
    if e.kind == "dir":
        return _put_dir(store, {})
    if e.kind == "symlink":
        return SymlinkNode(e.target or b"")
    if e.contents is None:
        raise ValueError("a file needs contents to be stored")
    return FileNode(put_blob(store, e.contents), len(e.contents), e.executable)


def to_notation(tree: Mapping[str, Entry]) -> dict[str, Any]:
    """``tree`` in case notation: what a YAML ``expect.outputs`` entry would say."""
    parents = {rel.rpartition("/")[0] for rel in tree}
    out: dict[str, Any] = {}
    for rel, e in sorted(tree.items()):
        if e.kind == "dir":
            if rel not in parents:
                out[rel] = {"dir": True}
        elif e.kind == "symlink":
            out[rel] = {"symlink": os.fsdecode(e.target or b"")}
        else:
            text = _text(e.contents)
            value: dict[str, Any] = (
                {"contents": text} if text is not None else {"digest": e.digest, "size": e.size}
            )
            if e.executable:
                value["executable"] = True
            out[rel] = value if len(value) > 1 or text is None else text
    return out


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _with_parents(tree: Mapping[str, Entry]) -> dict[str, Entry]:
    full = dict(tree)
    for rel in tree:
        parent = rel.rpartition("/")[0]
        while parent and parent not in full:
            full[parent] = Entry(kind="dir")
            parent = parent.rpartition("/")[0]
    return full


def entry_problems(expected: Entry, actual: Entry) -> list[str]:
    """How ``actual`` differs from ``expected`` (empty: it matches)."""
    if expected.kind != actual.kind:
        return [f"is a {actual.kind}, expected a {expected.kind}"]
    problems = []
    if expected.kind == "symlink" and expected.target != actual.target:
        problems.append(f"points to {actual.target!r}, expected {expected.target!r}")
    if expected.kind == "file":
        digest = expected.digest
        if expected.contents is not None:
            digest = Digest.of(expected.contents).hex
        if digest is not None and digest != actual.digest:
            problems.append("contents differ")
        if expected.size is not None and expected.size != actual.size:
            problems.append(f"size {actual.size}, expected {expected.size}")
        if expected.executable != actual.executable:
            problems.append("executable" if actual.executable else "not executable")
    return problems


def diff_trees(expected: Mapping[str, Entry], actual: Mapping[str, Entry]) -> list[str]:
    """Lines describing the differences; empty if the trees match.

    Parent directories of expected paths are implied. Lines are ``- path`` (expected),
    ``+ path`` (actual) and, for small trees, ``  path`` for matching entries.
    """
    want, have = _with_parents(expected), dict(actual)
    paths = sorted(set(want) | set(have), key=lambda p: p.split("/"))
    rows: list[str] = []
    bad = 0
    for rel in paths:
        e, a = want.get(rel), have.get(rel)
        if e is not None and a is not None and not entry_problems(e, a):
            rows.append(f"  {rel:<28} {describe(a)}")
            continue
        bad += 1
        if e is not None:
            rows.append(f"- {rel:<28} {describe(e)}")
        if a is not None:
            note = "; ".join(entry_problems(e, a)) if e is not None else "unexpected"
            rows.append(f"+ {rel:<28} {describe(a)}   <- {note}")
        else:
            rows.append(f"+ {rel:<28} (missing)")
        if e is not None and a is not None:
            rows.extend(_contents_diff(e, a))
    if not bad:
        return []
    if len(paths) > SHOW_ALL:
        rows = [r for r in rows if not r.startswith("  ") or r.startswith("    ")]
        rows.append(f"  ({len(paths) - bad} matching entries not shown)")
    return rows


def describe(e: Entry) -> str:
    """One-line description: kind, size, executable bit, a preview of small text contents."""
    if e.kind == "dir":
        return "dir"
    if e.kind == "symlink":
        return f"symlink -> {os.fsdecode(e.target or b'')}"
    size = len(e.contents) if e.contents is not None else e.size
    parts = ["file", f"{size} B" if size is not None else "", "exec" if e.executable else ""]
    text = _text(e.contents)
    if text is not None:
        parts.append(repr(text) if len(text) <= 48 else repr(text[:45]) + "…")
    elif e.digest:
        parts.append(f"blake3 {e.digest[:16]}…")
    return " ".join(p for p in parts if p)


def _contents_diff(e: Entry, a: Entry) -> Iterator[str]:
    want, have = _text(e.contents), _text(a.contents)
    if want is None or have is None or want == have:
        return
    if "\n" not in want.rstrip("\n") and "\n" not in have.rstrip("\n"):
        return  # one-liners are readable in the rows themselves
    lines = difflib.unified_diff(want.splitlines(), have.splitlines(), "expected", "actual",
                                 lineterm="", n=2)
    yield from (f"      {line}" for line in lines)
