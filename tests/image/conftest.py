"""Synthetic closures for the image tests: store paths with real trees in a LocalStore."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.image.layering import Item


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
