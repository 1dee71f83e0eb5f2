"""ResultStore: finished builds recorded under their request digest, with their logs.

A request is content-addressed all the way down (its inputs are castore nodes), so its digest
is a complete cache key, as OBuilder's build id is. Layout next to the castore under ``root``::

    results/<2 hex>/<64 hex>.json   a Record (outputs as nodes, needles, timings, status)
    logs/<2 hex>/<64 hex>.log       the log of the latest finished attempt of that request
    logs/<2 hex>/<64 hex>.log.runs  which bytes of the log came from stdout, which from stderr
    locks/<64 hex>.lock             flock held while one process builds the request
    tmp/                            staging files (shared with LocalStore), renamed into place

Every write goes to a private staging file and is renamed over its target, so readers see
the old record or the new one, never a torn one, and concurrent writers of one key all
succeed. A record's ``last_used`` is its file's mtime, bumped on every hit (LRU for gc).
Failed builds are recorded only when the caller asks (``Record.ok`` is False).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ocibuild.build import logs
from pytest_ocibuild.build.atomic import atomic_write, file_lock, staging_path
from pytest_ocibuild.build.request import Build, BuildRequest, node_to_dict
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.errors import InvalidRequest, StoreError

RECORD_VERSION = 1
_HEX = frozenset("0123456789abcdef")



# Bump when what a build sees changes (spec, bundle, runtime): recorded results from an older
# sandbox are then no longer hits. Part of every result key.
SANDBOX_VERSION = 2


def result_key(request: BuildRequest) -> str:
    """The result-cache key of ``request``: its digest salted with SANDBOX_VERSION (hex)."""
    salt = f"ocibuild-sandbox-v{SANDBOX_VERSION}\n".encode()
    return Digest.of(salt + request.canonical_json()).hex


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """What a finished build left: outputs (in ``request.outputs`` order) or its failure."""

    key: str  # request digest, hex
    ok: bool
    outputs: tuple[tuple[str, Node], ...] = ()  # (output path, node)
    needles: tuple[tuple[int, ...], ...] = ()
    exit_code: int = 0
    duration: float = 0.0  # runc run seconds
    elapsed: float = 0.0  # wall seconds of the whole build (bundle, run, ingest, commit)
    created: float = 0.0  # unix time
    last_used: float = 0.0  # unix time (the record file's mtime)
    reason: str = ""  # BuildFailed.reason of a failed build
    message: str = ""
    timeout: float = 0.0  # the limit a build that timed out ran into

    def covers(self, timeout: float | None) -> bool:
        """Whether a build with ``timeout`` would time out as this recorded one did."""
        return self.reason == "timeout" and timeout is not None and 0 < timeout <= self.timeout

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(n for _, n in self.outputs)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "version": RECORD_VERSION, "key": self.key, "ok": self.ok,
            "outputs": [{"path": p, **node_to_dict(n)} for p, n in self.outputs],
            "needles": [list(x) for x in self.needles], "exit_code": self.exit_code,
            "duration": self.duration, "elapsed": self.elapsed, "created": self.created,
        }
        if not self.ok:
            data.update(reason=self.reason, message=self.message)
        if self.reason == "timeout":
            data.update(timeout=self.timeout)
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, *, last_used: float = 0.0) -> Record:
        from pytest_ocibuild.build.request_io import node_from_dict

        d = json.loads(data)
        if d.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown record version {d.get('version')!r}")
        return cls(
            key=str(d["key"]), ok=bool(d["ok"]),
            outputs=tuple((str(o["path"]), node_from_dict(
                {k: v for k, v in o.items() if k != "path"}, f"output {o['path']}"))
                for o in d["outputs"]),
            needles=tuple(tuple(int(i) for i in x) for x in d["needles"]),
            exit_code=int(d["exit_code"]), duration=float(d["duration"]),
            elapsed=float(d["elapsed"]), created=float(d["created"]), last_used=last_used,
            reason=str(d.get("reason", "")), message=str(d.get("message", "")),
            timeout=float(d.get("timeout", 0.0)),
        )

    @classmethod
    def of_build(cls, build: Build, *, elapsed: float) -> Record:
        r = build.request
        return cls(key=result_key(r), ok=True, outputs=tuple(zip(r.outputs, build.outputs,
                                                                strict=True)),
                   needles=build.outputs_needles, exit_code=build.exit_code,
                   duration=build.duration, elapsed=elapsed, created=time.time())

    def to_build(self, request: BuildRequest, *, log_path: str | None) -> Build:
        """The recorded Build of ``request`` (``cached=True``); ValueError if it does not fit."""
        if not self.ok or tuple(p for p, _ in self.outputs) != request.outputs:
            raise ValueError(f"record {self.key} does not describe this request's outputs")
        return Build(request=request, outputs=self.nodes, outputs_needles=self.needles,
                     exit_code=self.exit_code, duration=self.duration, log_path=log_path,
                     cached=True)


@dataclass
class CacheStats:
    """Hit/miss counters of one Executor (thread-safe); ``merge`` adds another process's."""

    hits: int = 0
    misses: int = 0
    time_saved: float = 0.0  # seconds: recorded build time minus time spent waiting for it
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def hit(self, saved: float) -> None:
        with self._lock:
            self.hits += 1
            self.time_saved += max(0.0, saved)

    def miss(self) -> None:
        with self._lock:
            self.misses += 1

    def to_dict(self) -> dict[str, float]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses,
                    "time_saved": round(self.time_saved, 3)}

    def merge(self, other: dict[str, float] | CacheStats) -> None:
        d = other.to_dict() if isinstance(other, CacheStats) else other
        with self._lock:
            self.hits += int(d.get("hits", 0))
            self.misses += int(d.get("misses", 0))
            self.time_saved += float(d.get("time_saved", 0.0))


class ResultStore:
    """Records and logs of finished builds in ``root`` (see module docstring)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.results_dir = self.root / "results"
        self.logs_dir = self.root / "logs"
        self.locks_dir = self.root / "locks"
        self.tmp_dir = self.root / "tmp"
        for d in (self.results_dir, self.logs_dir, self.locks_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    def record_path(self, key: str) -> Path:
        return self.results_dir / key[:2] / f"{key}.json"

    def log_path(self, key: str) -> Path:
        """Where the log of ``key``'s latest finished attempt is kept (may not exist)."""
        return self.logs_dir / key[:2] / f"{key}.log"

    def get(self, key: str, *, touch: bool = False) -> Record | None:
        """The record of ``key``, or None (also for an unreadable one: it is rebuilt).

        ``touch`` marks it used now (for gc's least-recently-used order).
        """
        path = self.record_path(key)
        try:
            data = path.read_bytes()
            if touch:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
            last_used = os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        try:
            record = Record.from_json(data, last_used=last_used)
        except (ValueError, KeyError, TypeError, InvalidRequest):
            return None
        return record if record.key == key else None

    def put(self, record: Record) -> None:
        """Write ``record`` atomically (replacing an older one of the same key)."""
        atomic_write(self.record_path(record.key), record.to_json(), self.tmp_dir,
                     fsync=self.fsync)

    def new_log(self) -> Path:
        """A fresh log file in this store's staging area, for a build to write (see
        ``save_log(..., move=True)``; a crashed writer's staging is purged)."""
        path = staging_path(self.tmp_dir, "log")
        logs.create(path)
        return path

    def save_log(self, key: str, log: Path, *, move: bool = False) -> Path:
        """Keep ``log`` (with its runs, see build.logs) as ``key``'s log; returns where.

        ``move``: ``log`` is a ``new_log`` of this store, renamed into place; otherwise it is
        hard-linked where it can be, so the output is on disk once either way."""
        target = self.log_path(key)
        logs.keep(log, target, move=move, tmp_dir=self.tmp_dir)
        return target

    def remove(self, key: str, *, log: bool = True) -> int:
        """Delete ``key``'s record (and log); returns the log bytes freed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(key))
        return logs.remove(self.log_path(key)) if log else 0

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s build lock (threads and processes alike) for the block."""
        with file_lock(self.locks_dir / f"{key}.lock"):
            yield

    def record_keys(self) -> Iterator[str]:
        """Every recorded key."""
        yield from _keys(self.results_dir, ".json")

    def log_keys(self) -> Iterator[str]:
        """Every key with a kept log."""
        yield from _keys(self.logs_dir, ".log")

    def records(self) -> Iterator[Record]:
        for key in self.record_keys():
            record = self.get(key)
            if record is not None:
                yield record

    def resolve(self, prefix: str) -> str:
        """The unique key (with a record or a log) starting with ``prefix``.

        Raises InvalidRequest when none or several match.
        """
        prefix = prefix.strip()
        if prefix.startswith("blake3-"):
            with contextlib.suppress(ValueError):
                prefix = Digest.parse(prefix).hex
        prefix = prefix.lower()
        if not prefix or not set(prefix) <= _HEX:
            raise InvalidRequest(f"{prefix!r} is not a build key (the hex key that 'ocibuild "
                                 "build' prints, or a prefix of it)")
        found = {k for k in (*self.record_keys(), *self.log_keys()) if k.startswith(prefix)}
        if not found:
            raise InvalidRequest(f"no build {prefix!r} in {self.root}")
        if len(found) > 1:
            raise InvalidRequest(f"build key {prefix!r} is ambiguous ({len(found)} match)")
        return found.pop()


def _keys(base: Path, suffix: str) -> Iterator[str]:
    try:
        subs = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for sub in subs:
        if len(sub) != 2 or not set(sub) <= _HEX:
            continue
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(base / sub):
                key = name[: -len(suffix)]
                if name.endswith(suffix) and len(key) == 64 and key.startswith(sub):
                    yield key


def check_outputs_present(store: Any, record: Record) -> bool:
    """True if every top-level output object of ``record`` is in ``store``."""
    from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode

    try:
        for node in record.nodes:
            if isinstance(node, FileNode) and not store.has_blob(node.digest, node.size):
                return False
            if isinstance(node, DirectoryNode) and store.get_directory(node.digest) is None:
                return False
    except StoreError:
        return False
    return True
