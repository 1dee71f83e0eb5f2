"""Popularity counts: Nixery's file format, or counted from the closures built in a store.

Nixery's ``popularity.json`` is one JSON object mapping a store path's name (the path without
``/nix/store/<hash>-``) to a count. Counted from the store, a name's popularity is the number
of built outputs (Nix results recorded under ``<store>/nix/drvs-v*``) whose runtime closure
holds a path of that name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_ocibuild.errors import InvalidRequest
from pytest_ocibuild.image.layering import package_name


def load_popularity(path: Path) -> dict[str, int]:
    """Read a Nixery popularity file; InvalidRequest (one line naming the file) if malformed."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise InvalidRequest(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise InvalidRequest(f"{path}: not JSON: {e}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in data.items()):
        raise InvalidRequest(f"{path}: expected an object of store path name -> count")
    return data


def count_closures(graph: Mapping[str, Iterable[str]], tops: Iterable[str]) -> dict[str, int]:
    """For each name, how many of ``tops`` have a path of that name in their closure.

    ``graph``: path -> references; references to unknown paths are ignored."""
    counts: dict[str, int] = {}
    memo: dict[str, frozenset[str]] = {}
    for top in sorted(set(tops)):
        names = {package_name(p) for p in _closure(graph, top, memo)}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
    return counts


def _closure(graph: Mapping[str, Iterable[str]], top: str,
             memo: dict[str, frozenset[str]]) -> frozenset[str]:
    if top in memo:
        return memo[top]
    done: set[str] = set()
    todo = [top]
    while todo:
        p = todo.pop()
        if p in done:
            continue
        if p in memo and p != top:
            done |= memo[p]
            continue
        done.add(p)
        todo.extend(r for r in graph.get(p, ()) if r not in done)
    memo[top] = frozenset(done)
    return memo[top]


def store_popularity(store_dir: Path) -> dict[str, int]:
    """Popularity counted over the Nix results and sources recorded in ``store_dir``."""
    graph: dict[str, list[str]] = {}
    tops: list[str] = []
    nix = Path(store_dir) / "nix"
    records = sorted(nix.glob("drvs-v*/*.json")) if nix.is_dir() else []
    for f in records:
        try:
            outputs = json.loads(f.read_bytes()).get("outputs", {})
            for info in outputs.values():
                graph[str(info["path"])] = [str(r) for r in info["references"]]
                tops.append(str(info["path"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a record being replaced or not ours: it does not count
    for f in sorted((nix / "srcs").glob("*.json")) if nix.is_dir() else []:
        try:
            info = json.loads(f.read_bytes())
            graph.setdefault(str(info["path"]), [str(r) for r in info["references"]])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return count_closures(graph, tops)
