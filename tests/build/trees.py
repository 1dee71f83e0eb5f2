"""Declarative castore trees for tests: a dict spec goes into a store, a disk tree comes back out.

Spec: ``{"a": b"data", "bin/x": Exec(b"..."), "l": Link("target"), "empty/": {}, "d": {...}}``.
Keys may contain ``/`` (intermediate directories are created); a trailing ``/`` marks a directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store


@dataclass(frozen=True)
class Exec:
    """An executable file."""

    data: bytes


@dataclass(frozen=True)
class Link:
    """A symbolic link to ``target``."""

    target: str | bytes


Spec = Mapping[str, "Value"]
Value = Union[bytes, Exec, Link, Spec]  # noqa: UP007

#: One on-disk entry: ("dir", mode) | ("file", mode, data) | ("link", target).
Entry = tuple[object, ...]


def _nest(spec: Spec) -> dict[str, Value]:
    """Split slash-separated keys into nested dicts, merging directories named more than once."""
    out: dict[str, Value] = {}
    for key, value in spec.items():
        first, sep, rest = key.partition("/")
        if sep and rest:
            value = {rest: value}
        if isinstance(value, Mapping):
            value = _nest(value)
        out = _merge(out, {first: value})
    return out


def _merge(a: dict[str, Value], b: dict[str, Value]) -> dict[str, Value]:
    """Union of two nested specs; a name may repeat only as a directory in both."""
    out = dict(a)
    for name, child in b.items():
        if isinstance(child, dict) and isinstance(out.get(name), dict):
            out[name] = _merge(out[name], child)  # type: ignore[arg-type]
        elif name in out:
            raise ValueError(f"duplicate entry {name!r}")
        else:
            out[name] = child
    return out


def put_node(store: Store, value: Value) -> Node:
    """Store ``value`` (bytes, Exec, Link or a spec dict) and return its node."""
    if isinstance(value, Link):
        target = value.target if isinstance(value.target, bytes) else os.fsencode(value.target)
        return SymlinkNode(target)
    if isinstance(value, bytes | Exec):
        data = value if isinstance(value, bytes) else value.data
        with store.blob_writer() as w:
            w.write(data)
            digest = w.commit()
        return FileNode(digest, len(data), isinstance(value, Exec))
    entries = {os.fsencode(k): put_node(store, v) for k, v in _nest(value).items()}
    directory = Directory(entries)
    store.put_directory(directory)
    return directory.node()


def put_tree(store: Store, spec: Spec) -> DirectoryNode:
    """Store a whole tree and return its root DirectoryNode."""
    node = put_node(store, spec)
    assert isinstance(node, DirectoryNode)
    return node


def expected(spec: Spec) -> dict[str, Entry]:
    """What ``snapshot`` should return for a provider serving ``spec`` (modes as tvix serves)."""
    out: dict[str, Entry] = {}

    def walk(prefix: str, tree: dict[str, Value]) -> None:
        for name, value in tree.items():
            path = f"{prefix}{name}"
            if isinstance(value, Link):
                t = value.target
                out[path] = ("link", t if isinstance(t, bytes) else os.fsencode(t))
            elif isinstance(value, Exec):
                out[path] = ("file", 0o555, value.data)
            elif isinstance(value, bytes):
                out[path] = ("file", 0o444, value)
            else:
                out[path] = ("dir", 0o555)
                walk(path + "/", dict(value))

    walk("", _nest(spec))
    return out


def snapshot(root: Path) -> dict[str, Entry]:
    """Describe the tree under ``root`` (not following symlinks), like ``expected``."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(os.fsencode(full)))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes())
    return out
