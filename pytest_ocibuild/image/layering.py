"""Nixery's layering: dominator subtrees of the runtime graph, merged down to a budget.

The graph has a root (the image) with an edge to each of the image's top-level paths and to
every path that is *big* (closure over 100 MB) or *popular* (popularity >= 100), and an edge
from each path to each of its references (self-references left out). Each subtree directly
below the root in the dominator tree is a layer; its merge rating is the popularity of its
root times its size. While there are more layers than the budget, the two lowest rated are
merged (the merged layer keeps the lowest position, as Nixery's loop does). Ties are broken by
contents, so the same graph always gives the same layers.

Differences from Nixery, deliberately: a layer's size is the sum of its paths' own NAR sizes
(Nixery adds up closure sizes), and ``nss-cacert``/``iana-etc`` get no special popularity.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pytest_ocibuild.castore.nodes import Node

DEFAULT_BUDGET = 94  # of the 125 layers Docker allows, as Nixery
MAX_LAYERS = 125
BIG = 100 * 1000 * 1000
POPULAR = 100
_STORE_PREFIX = re.compile(r"^/nix/store/[0-9a-z]{32}-")


@dataclass(frozen=True, slots=True)
class Item:
    """One path of the image: where it goes, its tree, its size and what it refers to."""

    path: str  # absolute path in the image, e.g. /nix/store/<hash>-name
    node: Node
    size: int
    references: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The popularity key: a store path without ``/nix/store/<hash>-`` (Nixery's name)."""
        return package_name(self.path)


def package_name(path: str) -> str:
    """``/nix/store/<hash>-hello-2.12`` -> ``hello-2.12`` (other paths are kept whole)."""
    return _STORE_PREFIX.sub("", path)


@dataclass(frozen=True)
class Layer:
    """Paths sharing one layer (sorted) and the rating they were merged by."""

    contents: tuple[str, ...]
    rating: int = field(default=0, compare=False)

    @property
    def hash(self) -> str:
        """A stable identifier of the contents (Nixery hashes ``:``-joined paths)."""
        return hashlib.sha256(":".join(self.contents).encode()).hexdigest()


def closure_sizes(items: Mapping[str, Item]) -> dict[str, int]:
    """Each path's closure size (its own size plus every path it reaches, once)."""
    reach: dict[str, int] = {}  # path -> bitmask of the closure
    bit = {p: 1 << i for i, p in enumerate(sorted(items))}
    for p in topological(items):
        mask = bit[p]
        for r in items[p].references:
            if r != p:
                mask |= reach[r]
        reach[p] = mask
    order = sorted(items)
    sizes = [items[p].size for p in order]
    out = {}
    for p, mask in reach.items():
        out[p] = sum(sizes[i] for i in range(len(order)) if mask >> i & 1)
    return out


def topological(items: Mapping[str, Item]) -> list[str]:
    """Paths with references before referrers (self-references ignored); ValueError on a
    cycle or a reference to a path that is not an item."""
    state: dict[str, int] = {}
    out: list[str] = []
    for start in sorted(items):
        if start in state:
            continue
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            p, done = stack.pop()
            if done:
                state[p] = 2
                out.append(p)
                continue
            if state.get(p) == 2:
                continue
            if state.get(p) == 1:
                raise ValueError(f"reference cycle through {p}")
            if p not in items:
                raise ValueError(f"reference to {p}, which is not in the closure")
            state[p] = 1
            stack.append((p, True))
            for r in sorted(items[p].references, reverse=True):
                if r != p and state.get(r) != 2:
                    if r not in items:
                        raise ValueError(f"{p} refers to {r}, which is not in the closure")
                    stack.append((r, False))
    return out


def dominators(succ: Mapping[str, Sequence[str]], root: str) -> dict[str, str]:
    """Immediate dominator of every node reachable from ``root`` (Cooper, Harvey, Kennedy)."""
    order: list[str] = []  # postorder
    seen = {root}
    stack = [(root, iter(sorted(succ.get(root, ()))))]
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            order.append(node)
        elif child not in seen:
            seen.add(child)
            stack.append((child, iter(sorted(succ.get(child, ())))))
    index = {n: i for i, n in enumerate(order)}
    preds: dict[str, list[str]] = {n: [] for n in order}
    for n in order:
        for s in succ.get(n, ()):
            preds[s].append(n)
    idom: dict[str, str] = {root: root}
    changed = True
    while changed:
        changed = False
        for n in reversed(order):
            if n == root:
                continue
            new = None
            for p in preds[n]:
                if p not in idom:
                    continue
                new = p if new is None else _intersect(p, new, idom, index)
            if new is not None and idom.get(n) != new:
                idom[n] = new
                changed = True
    return idom


def _intersect(a: str, b: str, idom: Mapping[str, str], index: Mapping[str, int]) -> str:
    while a != b:
        while index[a] < index[b]:
            a = idom[a]
        while index[b] < index[a]:
            b = idom[b]
    return a


ROOT = "\0image"  # no path can be this


def group_layers(items: Mapping[str, Item], roots: Sequence[str], *,
                 popularity: Mapping[str, int] | None = None,
                 budget: int = DEFAULT_BUDGET) -> list[Layer]:
    """The layers of an image of ``roots`` and their closure ``items`` (Nixery's algorithm)."""
    if budget < 1:
        raise ValueError("the layer budget must be at least 1")
    pop = popularity or {}
    topological(items)  # every reference resolves; no cycles
    sizes = closure_sizes(items)

    def popularity_of(p: str) -> int:
        return int(pop.get(items[p].name, 1))

    succ: dict[str, list[str]] = {ROOT: sorted(set(roots))}
    for p, item in items.items():
        succ[p] = sorted({r for r in item.references if r != p})
        if (sizes[p] > BIG or popularity_of(p) >= POPULAR) and p not in succ[ROOT]:
            succ[ROOT].append(p)
    idom = dominators(succ, ROOT)
    children: dict[str, list[str]] = {}
    for n, d in idom.items():
        if n != ROOT:
            children.setdefault(d, []).append(n)
    layers = []
    for top in sorted(children.get(ROOT, [])):
        contents, todo = [], [top]
        while todo:
            n = todo.pop()
            contents.append(n)
            todo.extend(children.get(n, []))
        size = sum(items[p].size for p in contents)
        layers.append(Layer(tuple(sorted(contents)), popularity_of(top) * size))
    layers.sort(key=lambda lay: (lay.rating, lay.contents))
    while len(layers) > budget:
        a, b = layers[0], layers[1]
        layers[1] = Layer(tuple(sorted(a.contents + b.contents)), a.rating + b.rating)
        layers = layers[1:]
    return layers
