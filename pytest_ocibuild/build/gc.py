"""Store maintenance: ``gc`` (mark from roots, sweep the rest), ``df`` and ``verify``.

Roots are the result records gc keeps plus explicit nodes. Records are kept most recently used
first (``last_used``), within ``max_age`` and while the objects they reach fit in ``max_size``
(the first one that does not fit, and every older one, is dropped: least recently used goes
first, as OBuilder prunes). Failed records go unless ``keep_failed``. Every blob (with its
``.x`` twin) and directory no kept root reaches is deleted, except objects younger than
``grace`` seconds: a build may have just ingested them and not yet recorded its result.
Packs (``castore/pack.py``) older than ``grace`` are deleted once nothing in them is kept, and
rewritten with only their kept objects once those are under half of their bytes.

Builds hold ``locks/gc.lock`` shared from lookup to record; gc takes it exclusively, so it
waits for builds in flight and builds wait for it. Works on a LocalStore's directory layout.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pytest_ocibuild.build.atomic import file_lock
from pytest_ocibuild.build.results import Record, ResultStore
from pytest_ocibuild.castore.digest import Digest, hasher
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.pack import (
    BLOB,
    DIRECTORY,
    KIND_NAMES,
    PackWriter,
    is_pack_id,
    read_entry,
    read_index,
)
from pytest_ocibuild.errors import StoreError

GC_LOCK = "gc.lock"
GRACE = 600.0  # seconds


def gc_lock_path(root: Path) -> Path:
    return Path(root) / "locks" / GC_LOCK


@dataclass
class Closure:
    """Objects reachable from some nodes, with the bytes they take on disk."""

    blobs: set[Digest] = field(default_factory=set)
    dirs: set[Digest] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    size: int = 0


@dataclass
class GcReport:
    records_kept: int = 0
    records_removed: int = 0
    blobs_removed: int = 0
    dirs_removed: int = 0
    logs_removed: int = 0
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _obj(root: Path, kind: str, digest: Digest) -> Path:
    h = digest.hex
    return root / kind / h[:2] / h


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def add_closure(store: LocalStore, nodes: Iterable[Node], into: Closure) -> Closure:
    """Add everything ``nodes`` reach to ``into`` (objects already in it are not re-read)."""
    stack: list[Node] = list(nodes)
    store.packs.refresh()
    while stack:
        node = stack.pop()
        if isinstance(node, FileNode):
            if node.digest not in into.blobs:
                into.blobs.add(node.digest)
                path = _obj(store.root, "blobs", node.digest)
                packed = store.packs.get(node.digest, refresh=False)
                if packed is None and not path.exists():
                    into.missing.append(f"blob {node.digest.hex}")
                into.size += _size(path) + _size(path.with_name(path.name + ".x"))
                into.size += packed[2] if packed else 0
        elif isinstance(node, DirectoryNode) and node.digest not in into.dirs:
            into.dirs.add(node.digest)
            try:
                d = store.get_directory(node.digest)
            except StoreError:
                d = None
            if d is None:
                into.missing.append(f"directory {node.digest.hex}")
                continue
            into.size += _size(_obj(store.root, "directories", node.digest))
            packed = store.packs.get(node.digest, DIRECTORY, refresh=False)
            into.size += packed[2] if packed else 0
            stack.extend(d.entries.values())
    return into


def gc(
    root: Path | str,
    *,
    max_age: float | None = None,
    max_size: int | None = None,
    keep_failed: bool = False,
    roots: Iterable[Node] = (),
    grace: float = GRACE,
) -> GcReport:
    """Drop results beyond the budgets and every object no kept root reaches (see module doc).

    ``max_age`` in seconds since last use; ``max_size`` in bytes of reachable objects.
    """
    root = Path(root)
    store, results = LocalStore(root), ResultStore(root)
    report = GcReport()
    now = time.time()
    with file_lock(gc_lock_path(root)):
        marked = add_closure(store, roots, Closure())
        records = sorted(results.records(), key=lambda r: r.last_used, reverse=True)
        keep: list[Record] = []
        over = False
        for r in records:
            if not r.ok:
                if keep_failed:
                    keep.append(r)
                continue
            if over or (max_age is not None and now - r.last_used > max_age):
                continue
            trial = Closure(set(marked.blobs), set(marked.dirs), [], marked.size)
            add_closure(store, r.nodes, trial)
            if trial.missing:
                continue  # broken record: its outputs are gone, drop it
            if max_size is not None and trial.size > max_size:
                over = True
                continue
            marked = trial
            keep.append(r)
        kept = {r.key for r in keep}
        for r in records:
            if r.key not in kept:
                results.remove(r.key)
                report.records_removed += 1
        report.records_kept = len(kept)
        for key in list(results.log_keys()):
            log = results.log_path(key)
            if key not in kept and not _young(log, now, grace):
                report.bytes_freed += results.remove(key)
                report.logs_removed += 1
        report.blobs_removed, freed_b = _sweep(root / "blobs", marked.blobs, now, grace, True)
        report.dirs_removed, freed_d = _sweep(root / "directories", marked.dirs, now, grace)
        report.bytes_freed += freed_b + freed_d + _sweep_packs(store, marked, now, grace, report)
    return report


def _sweep_packs(store: LocalStore, marked: Closure, now: float, grace: float,
                 report: GcReport) -> int:
    """Delete or rewrite packs older than ``grace`` that hold unmarked objects; bytes freed."""
    keep = ({d.raw for d in marked.blobs}, {d.raw for d in marked.dirs})
    freed = 0
    for pack, path in _pack_files(store.root):
        if _young(path, now, grace):
            continue
        try:
            rows = read_index(str(path))[0]
        except (OSError, ValueError):
            continue  # unreadable: leave it for `store verify` to report
        live = [r for r in rows if r[1] in keep[r[0]]]
        if sum(r[3] for r in live) * 2 >= sum(r[3] for r in rows) and live:
            continue  # mostly kept: not worth rewriting
        before = _size(path)
        if live:
            with open(path, "rb") as f, PackWriter(store) as out:
                for kind, raw, offset, size in live:
                    data = read_entry("", (pack, offset, size), Digest(raw), kind, f.fileno())
                    if data is not None:
                        out.add(kind, Digest(raw), data)
            freed -= sum(_size(path.with_name(p + ".pack")) for p in out.published)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # readers holding its entries look again (LocalStore._read_packed)
        freed += before
        dead = [r for r in rows if r[1] not in keep[r[0]]]
        report.blobs_removed += sum(r[0] == BLOB for r in dead)
        report.dirs_removed += sum(r[0] != BLOB for r in dead)
    return freed


def _pack_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(id, path) of every pack file under ``root/packs``."""
    base = Path(root) / "packs"
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for name in names:
        pack, _, ext = name.rpartition(".")
        if ext == "pack" and is_pack_id(pack):
            yield pack, base / name


def _young(path: Path, now: float, grace: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime < grace
    except FileNotFoundError:
        return True


def _sweep(base: Path, keep: set[Digest], now: float, grace: float,
           twins: bool = False) -> tuple[int, int]:
    removed = freed = 0
    for path, digest, _is_twin in _objects(base, twins):
        if digest in keep or _young(path, now, grace):
            continue
        size = _size(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            freed += size
            removed += not _is_twin
    return removed, freed


def _objects(base: Path, twins: bool = False) -> Iterator[tuple[Path, Digest, bool]]:
    """(path, digest, is_twin) of every object file under ``base`` (ill-named files skipped)."""
    try:
        subs = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for sub in subs:
        if len(sub) != 2:
            continue
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(base / sub)):
                is_twin = twins and name.endswith(".x")
                hexpart = name[:-2] if is_twin else name
                try:
                    digest = Digest.from_hex(hexpart)
                except ValueError:
                    continue
                if hexpart.startswith(sub):
                    yield base / sub / name, digest, is_twin


def df(root: Path | str) -> dict[str, dict[str, int]]:
    """Counts and bytes per part of the store: blobs, twins, directories, results, logs, ..."""
    root = Path(root)
    out: dict[str, dict[str, int]] = {}

    def add(kind: str, path: Path) -> None:
        entry = out.setdefault(kind, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += _size(path)

    for path, _d, is_twin in _objects(root / "blobs", twins=True):
        add("blob-twins" if is_twin else "blobs", path)
    for path, _d, _t in _objects(root / "directories"):
        add("directories", path)
    for _pack, path in _pack_files(root):
        add("packs", path)
    results = ResultStore(root)
    for key in results.record_keys():
        record = results.get(key)
        add("results" if record is None or record.ok else "failed-results",
            results.record_path(key))
    for key in results.log_keys():
        add("logs", results.log_path(key))
    from pytest_ocibuild.build.caches import CacheStore

    for info in CacheStore(root).ls():
        entry = out.setdefault("caches", {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += info.size
    for name in os.listdir(root / "tmp") if (root / "tmp").is_dir() else []:
        add("staging", root / "tmp" / name)
    out["total"] = {"count": sum(v["count"] for v in out.values()),
                    "bytes": sum(v["bytes"] for v in out.values())}
    return out


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)  # "blob <hex>: why", ...
    missing: list[str] = field(default_factory=list)  # objects records reference but lack

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def _hash_file(path: Path) -> Digest:
    h = hasher()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return Digest(h.digest())


def _verify_pack(pack: str, path: Path, report: VerifyReport) -> None:
    """Check a pack's footer and index and re-hash every object in it."""
    try:
        rows = read_index(str(path))[0]
    except (OSError, ValueError) as e:
        report.corrupt.append(f"pack {pack}: {e}")
        return
    with open(path, "rb") as f:
        for kind, raw, offset, size in rows:
            report.checked += 1
            what = f"{KIND_NAMES[kind]} {raw.hex()} (pack {pack})"
            try:
                read_entry("", (pack, offset, size), Digest(raw), kind, f.fileno())
            except StoreError as e:
                report.corrupt.append(f"{what}: {str(e).split(': ', 1)[-1]}")


def verify(root: Path | str) -> VerifyReport:
    """Re-hash every blob, twin and directory; check every result record and what it reaches."""
    root = Path(root)
    report = VerifyReport()
    for path, digest, is_twin in _objects(root / "blobs", twins=True):
        report.checked += 1
        actual = _hash_file(path)
        if actual != digest:
            kind = "blob twin" if is_twin else "blob"
            report.corrupt.append(f"{kind} {path.name}: contents hash to {actual.hex}")
    for path, digest, _t in _objects(root / "directories"):
        report.checked += 1
        data = path.read_bytes()
        if Digest.of(data) != digest:
            report.corrupt.append(f"directory {digest.hex}: contents hash to "
                                  f"{Digest.of(data).hex}")
            continue
        try:
            Directory.decode(data)
        except ValueError as e:
            report.corrupt.append(f"directory {digest.hex}: {e}")
    for pack, path in _pack_files(root):
        report.checked += 1
        _verify_pack(pack, path, report)
    store, results = LocalStore(root), ResultStore(root)
    bad = {line.split()[1].split(":")[0] for line in report.corrupt}
    seen = Closure()
    for key in results.record_keys():
        report.checked += 1
        record = results.get(key)
        if record is None:
            report.corrupt.append(f"result {key}: unreadable record")
            continue
        before = len(seen.missing)
        add_closure(store, record.nodes, seen)
        for m in seen.missing[before:]:
            if m.split()[1] not in bad:
                report.missing.append(f"result {key}: {m} is missing")
    return report
