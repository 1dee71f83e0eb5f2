"""Derivation closures and input sources.

``DrvGraph`` reads a ``.drv`` and, recursively, its input derivations from the local
``/nix/store`` (read-only) and orders them dependencies first. ``SourceCache`` brings input
sources (``inputSrcs`` and their runtime closure) into the castore once per store path, with
their Nix registration (NAR hash and size, references, content address), kept on disk by path.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.atomic import atomic_write
from pytest_ocibuild.build.request import node_to_dict
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.nar import nar_hash
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.derivation import Derivation, parse_drv
from pytest_ocibuild.nix.evaluate import path_infos
from pytest_ocibuild.nix.hashes import Hash, parse_hash
from pytest_ocibuild.nix.store_path import StorePath


@dataclass(frozen=True, slots=True)
class PathInfo:
    """A store path's registration as Nix keeps it, plus its castore node."""

    path: str
    node: Node
    nar_hash: Hash
    nar_size: int
    references: tuple[str, ...]  # absolute store paths, sorted
    ca: str = ""  # rendered content address ("fixed:r:sha256:<nix32>") or ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "node": node_to_dict(self.node),
                             "narHash": self.nar_hash.sri, "narSize": self.nar_size,
                             "references": list(self.references)}
        if self.ca:
            d["ca"] = self.ca
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PathInfo:
        """Inverse of ``to_json``; a malformed record raises ValueError, KeyError or TypeError."""
        return cls(path=str(d["path"]), node=node_from_json(d["node"]),
                   nar_hash=parse_hash(str(d["narHash"])), nar_size=int(d["narSize"]),
                   references=tuple(d["references"]), ca=str(d.get("ca", "")))


def node_from_json(d: Mapping[str, Any]) -> Node:
    """Inverse of ``node_to_dict`` for the records we write; ValueError if malformed."""
    from pytest_ocibuild.build.request_io import node_from_dict
    from pytest_ocibuild.errors import InvalidRequest

    try:
        return node_from_dict(d, "node")
    except InvalidRequest as e:
        raise ValueError(e.message) from None


def node_present(store: Store, node: Node) -> bool:
    """True if the top object of ``node`` is in ``store`` (children are written first)."""
    if isinstance(node, FileNode):
        return store.has_blob(node.digest, node.size)
    if isinstance(node, DirectoryNode):
        return store.get_directory(node.digest) is not None
    return True


def closure(roots: Iterable[str], infos: Mapping[str, PathInfo]) -> set[str]:
    """The runtime closure of ``roots`` under the references in ``infos``."""
    done: set[str] = set()
    todo = list(roots)
    while todo:
        p = todo.pop()
        if p in done:
            continue
        done.add(p)
        if p not in infos:
            raise NixError(f"path '{p}' is not valid (not built and not in the Nix store)")
        todo.extend(infos[p].references)
    return done


class DrvGraph:
    """The derivations needed to build ``top``: ``drvs`` by path, ``order`` dependencies first."""

    def __init__(self, top: str, root: str | Path = "/") -> None:
        self.top = top
        self.drvs: dict[str, Derivation] = {}
        self.order: list[str] = []
        base = Path(root)
        state: dict[str, int] = {}  # 1 visiting, 2 done
        stack: list[tuple[str, bool]] = [(top, False)]
        while stack:
            path, children_done = stack.pop()
            if children_done:
                state[path] = 2
                self.order.append(path)
                continue
            if state.get(path) == 2:
                continue
            if state.get(path) == 1:
                raise NixError(f"derivation '{path}' depends on itself")
            StorePath.from_absolute(path)
            try:
                data = (base / path.lstrip("/")).read_bytes()
            except OSError as e:
                raise NixError(f"cannot read derivation '{path}': {e.strerror}") from None
            drv = parse_drv(data, source=path)
            self.drvs[path] = drv
            state[path] = 1
            stack.append((path, True))
            for dep in reversed(list(drv.input_drvs)):
                if state.get(dep) != 2:
                    stack.append((dep, False))

    def dependents(self) -> dict[str, set[str]]:
        """For each derivation, the derivations that list it as an input."""
        out: dict[str, set[str]] = {p: set() for p in self.drvs}
        for p, drv in self.drvs.items():
            for dep in drv.input_drvs:
                out[dep].add(p)
        return out


class SourceCache:
    """Store paths from ``/nix/store`` ingested into the castore, once per path.

    Records are kept in ``root/<base name>.json``; a store path's contents never change, so a
    record stays valid while its castore objects exist. On first ingest the NAR hash computed
    from the castore is checked against Nix's registration.
    """

    def __init__(self, store: Store, root: Path, *, store_root: str | Path = "/") -> None:
        self.store = store
        self.root = Path(root)
        self.store_root = Path(store_root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self._mem: dict[str, PathInfo] = {}
        self._lock = threading.Lock()

    def _load(self, path: str) -> PathInfo | None:
        info = self._mem.get(path)
        if info is not None:
            return info
        try:
            info = PathInfo.from_json(json.loads((self.root / f"{os.path.basename(path)}.json")
                                                 .read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, NixError):
            return None
        if info.path != path or not node_present(self.store, info.node):
            return None
        self._mem[path] = info
        return info

    def get(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        """PathInfos of ``paths`` and their whole closure (ingesting what is new)."""
        with self._lock:
            result: dict[str, PathInfo] = {}
            todo = list(paths)
            missing: list[str] = []
            while todo:
                p = todo.pop()
                if p in result or p in missing:
                    continue
                info = self._load(p)
                if info is None:
                    missing.append(p)
                    continue
                result[p] = info
                todo.extend(info.references)
            if missing:
                for p, entry in path_infos(missing, self.store_root).items():
                    if p not in result:
                        result[p] = self._ingest(p, entry)
            return result

    def _ingest(self, path: str, entry: Mapping[str, Any]) -> PathInfo:
        cached = self._load(path)
        if cached is not None:
            return cached
        node = ingest_path(self.store, self.store_root / path.lstrip("/"))
        want = parse_hash(str(entry["narHash"]))
        got, size = nar_hash(self.store, node)
        if got != want.digest or size != int(entry["narSize"]):
            raise NixError(f"path '{path}': NAR of the castore copy does not match Nix's "
                           f"registration ({want.sri})")
        info = PathInfo(path=path, node=node, nar_hash=want, nar_size=size,
                        references=tuple(sorted(entry.get("references", []))),
                        ca=str(entry.get("ca") or ""))
        atomic_write(self.root / f"{os.path.basename(path)}.json",
                     json.dumps(info.to_json(), sort_keys=True).encode(), self.root / "tmp")
        self._mem[path] = info
        return info
