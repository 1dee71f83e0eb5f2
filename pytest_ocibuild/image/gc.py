"""Maintenance of the layer cache under ``<store>/image``: ``image_df`` and ``image_gc``.

The cache is only a cache: an exported layout holds its own links or copies of its blobs, so
anything here may go. ``image_gc`` keeps layer records most recently used first (a record's
mtime, touched on every hit) within ``max_age`` and while their blobs fit in ``max_size``,
drops the others, then deletes every blob no kept record names (config and manifest blobs are
written per export and are not recorded) and stale staging files, sparing files younger than
``grace`` seconds. Exports hold ``locks/gc.lock`` shared; gc takes it exclusively.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pytest_ocibuild.build.atomic import file_lock

GRACE = 600.0  # seconds, as the castore's gc
GC_LOCK = "gc.lock"


def gc_lock(image_dir: Path) -> Path:
    return Path(image_dir) / "locks" / GC_LOCK


@dataclass
class ImageGcReport:
    records_kept: int = 0
    records_removed: int = 0
    blobs_removed: int = 0
    staging_removed: int = 0
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _records(image_dir: Path) -> list[tuple[float, str, str, int]]:
    """``(last used, key, blob digest, blob size)`` of each readable record, newest first."""
    out = []
    d = image_dir / "layers"
    for name in os.listdir(d) if d.is_dir() else []:
        if not name.endswith(".json"):
            continue
        path = d / name
        try:
            rec = json.loads(path.read_bytes())
            out.append((path.stat().st_mtime, name[:-5], str(rec["digest"]), int(rec["size"])))
        except (OSError, ValueError, KeyError, TypeError):
            out.append((0.0, name[:-5], "", 0))  # unreadable: dropped unless young
    return sorted(out, reverse=True)


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _young(path: Path, now: float, grace: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime < grace
    except OSError:
        return True  # vanished: nothing to do


def _unlink(path: Path) -> int:
    size = _size(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return size


def image_df(image_dir: Path | str) -> dict[str, dict[str, int]]:
    """Counts and bytes: ``image-layers`` (recorded layer blobs), ``image-blobs`` (others:
    configs, manifests, orphans), ``image-records`` and ``image-staging``."""
    image_dir = Path(image_dir)
    out = {k: {"count": 0, "bytes": 0}
           for k in ("image-layers", "image-blobs", "image-records", "image-staging")}
    layers = {digest for _t, _k, digest, _s in _records(image_dir)}

    def add(kind: str, path: Path) -> None:
        out[kind]["count"] += 1
        out[kind]["bytes"] += _size(path)

    for sub, kind in (("layers", "image-records"), ("tmp", "image-staging")):
        d = image_dir / sub
        for name in os.listdir(d) if d.is_dir() else []:
            add(kind, d / name)
    blobs = image_dir / "blobs" / "sha256"
    for name in os.listdir(blobs) if blobs.is_dir() else []:
        add("image-layers" if name in layers else "image-blobs", blobs / name)
    return {k: v for k, v in out.items() if v["count"]}


def image_gc(image_dir: Path | str, *, max_age: float | None = None,
             max_size: int | None = None, grace: float = GRACE) -> ImageGcReport:
    """Drop layer records beyond the budgets and every blob no kept record names."""
    image_dir = Path(image_dir)
    report = ImageGcReport()
    if not image_dir.is_dir():
        return report
    now = time.time()
    with file_lock(gc_lock(image_dir)):
        keep: set[str] = set()
        total = 0
        for used, key, digest, size in _records(image_dir):
            record = image_dir / "layers" / f"{key}.json"
            fits = max_size is None or total + size <= max_size
            fresh = max_age is None or now - used <= max_age
            if digest and fits and fresh and (image_dir / "blobs" / "sha256" / digest).exists():
                keep.add(digest)
                total += size
                report.records_kept += 1
            elif digest or not _young(record, now, grace):
                report.bytes_freed += _unlink(record)
                report.records_removed += 1
        blobs = image_dir / "blobs" / "sha256"
        for name in sorted(os.listdir(blobs)) if blobs.is_dir() else []:
            path = blobs / name
            if name not in keep and not _young(path, now, grace):
                report.bytes_freed += _unlink(path)
                report.blobs_removed += 1
        tmp = image_dir / "tmp"
        for name in sorted(os.listdir(tmp)) if tmp.is_dir() else []:
            if not _young(tmp / name, now, grace):
                report.bytes_freed += _unlink(tmp / name)
                report.staging_removed += 1
        locks = image_dir / "locks"
        for name in os.listdir(locks) if locks.is_dir() else []:
            if name != GC_LOCK and not _young(locks / name, now, grace):
                with contextlib.suppress(OSError):
                    os.unlink(locks / name)  # file_lock re-locks a re-created file
    return report
