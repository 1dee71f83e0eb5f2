"""BuildRequest and Build: the executor's Nix-agnostic wire types (after tvix's build.proto).

Paths are POSIX strings. Every invariant is checked in ``__post_init__`` and a violation raises
InvalidRequest with a one-line message naming the field.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import (
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    validate_name,
)
from pytest_ocibuild.errors import InvalidRequest


def check_clean_relative(path: str, what: str) -> str:
    """``path`` must be relative, non-empty, with no '.', '..' or superfluous slashes."""
    if not isinstance(path, str) or not path:
        raise InvalidRequest(f"{what}: must be a non-empty relative path, got {path!r}")
    if path.startswith("/"):
        raise InvalidRequest(f"{what}: {path!r:.80} is absolute, a relative path is required")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise InvalidRequest(f"{what}: {path!r:.80} is not a clean path (no '.', '..', '//')")
    if len(path.encode(errors="surrogateescape")) > MAX_PATH:
        raise InvalidRequest(f"{what}: {path!r:.40}... is longer than {MAX_PATH} bytes")
    long = next((p for p in parts if len(p.encode(errors="surrogateescape")) > MAX_COMPONENT),
                None)
    if long is not None:
        raise InvalidRequest(f"{what}: component {long!r:.40}... is longer than "
                             f"{MAX_COMPONENT} bytes")
    return path


MAX_COMPONENT = 255  # NAME_MAX
MAX_PATH = 1024  # far below PATH_MAX (4096), which also holds the bundle's host prefix


def check_clean_absolute(path: str, what: str) -> str:
    """``path`` must be absolute and clean."""
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise InvalidRequest(f"{what}: {path!r} must be an absolute path below /")
    check_clean_relative(path[1:], what)
    return path


def _check_sorted_unique(items: tuple[str, ...], what: str) -> None:
    for a, b in itertools.pairwise(items):
        if a == b:
            raise InvalidRequest(f"{what}: duplicate entry {a!r}")
        if a.encode() > b.encode():
            raise InvalidRequest(f"{what}: not sorted ({a!r} comes before {b!r})")


def is_path_prefix(prefix: str, path: str) -> bool:
    """True if ``prefix`` equals ``path`` or is a whole-component prefix of it."""
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable; ``key`` has no '=' or NUL, ``value`` is bytes without NUL."""

    key: str
    value: bytes

    def __post_init__(self) -> None:
        if not self.key or "=" in self.key or "\0" in self.key:
            raise InvalidRequest(f"environment_vars: invalid key {self.key!r}")
        if not isinstance(self.value, bytes):
            object.__setattr__(self, "value", str(self.value).encode())
        if b"\0" in self.value:
            raise InvalidRequest(f"environment_vars: {self.key} contains a NUL byte")


@dataclass(frozen=True, slots=True)
class AdditionalFile:
    """A small file placed into the build environment outside inputs_dir (clean relative path)."""

    path: str
    contents: bytes

    def __post_init__(self) -> None:
        check_clean_relative(self.path, "additional_files")


CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class CacheMount:
    """A persistent cache (OBuilder's ``(cache ...)``): ``name`` mounted writable at ``/<path>``.

    ``name`` is letters, digits, ``._-`` (not starting with ``.``/``-``), at most 128 chars;
    ``path`` is a clean relative path. The build works on a private clone of the cache's
    latest snapshot (see build.caches).
    """

    name: str
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not CACHE_NAME.fullmatch(self.name):
            raise InvalidRequest(f"caches: invalid cache name {self.name!r}")
        check_clean_relative(self.path, f"caches.{self.name}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraints:
    """Conditions the build host must satisfy; see build.proto BuildConstraints."""

    system: str = "x86_64-linux"
    min_memory: int = 0
    available_ro_paths: tuple[str, ...] = ()  # clean absolute paths, sorted
    network_access: bool = False
    provide_bin_sh: bool = False

    def __post_init__(self) -> None:
        if not self.system:
            raise InvalidRequest("constraints.system: must not be empty")
        if not isinstance(self.min_memory, int) or self.min_memory < 0:
            raise InvalidRequest(f"constraints.min_memory: {self.min_memory!r} is not a size")
        object.__setattr__(self, "available_ro_paths", tuple(self.available_ro_paths))
        for p in self.available_ro_paths:
            check_clean_absolute(p, "constraints.available_ro_paths")
        _check_sorted_unique(self.available_ro_paths, "constraints.available_ro_paths")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRequest:
    """What to run: inputs (castore nodes by name), command, env, scratch paths and outputs."""

    inputs: Mapping[str, Node] = field(default_factory=dict)  # name -> node, served in inputs_dir
    command_args: tuple[str, ...]  # argv; non-empty
    working_dir: str = "build"  # clean relative path
    scratch_paths: tuple[str, ...] = ("build",)  # clean relative, sorted; writable in the build
    inputs_dir: str = "inputs"  # clean relative path where inputs appear
    outputs: tuple[str, ...] = ()  # clean relative, sorted; each inside some scratch path
    environment_vars: tuple[EnvVar, ...] = ()  # sorted by key, unique
    constraints: Constraints = field(default_factory=Constraints)
    additional_files: tuple[AdditionalFile, ...] = ()  # sorted by path, unique
    refscan_needles: tuple[str, ...] = ()  # strings searched for in outputs
    caches: tuple[CacheMount, ...] = ()  # sorted by name, unique names; see _check_caches
    limits: Limits = field(default_factory=Limits)  # not in the digest (see build.limits)
    reject_writable_outputs: bool = False  # refuse output roots writable by group/others

    def __post_init__(self) -> None:
        for name in ("command_args", "scratch_paths", "outputs", "environment_vars",
                     "additional_files", "refscan_needles", "caches"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        inputs = dict(self.inputs)
        names = tuple(inputs)
        for n in names:
            try:
                validate_name(n.encode())
            except (ValueError, AttributeError) as e:
                raise InvalidRequest(f"inputs: {e}") from None
            if not isinstance(inputs[n], FileNode | DirectoryNode | SymlinkNode):
                raise InvalidRequest(f"inputs: {n!r} is not a castore node")
        object.__setattr__(self, "inputs", {n: inputs[n] for n in sorted(names)})
        if not self.command_args or not all(isinstance(a, str) for a in self.command_args):
            raise InvalidRequest("command_args: must be a non-empty list of strings")
        check_clean_relative(self.working_dir, "working_dir")
        check_clean_relative(self.inputs_dir, "inputs_dir")
        for p in self.scratch_paths:
            check_clean_relative(p, "scratch_paths")
        _check_sorted_unique(self.scratch_paths, "scratch_paths")
        for p in self.outputs:
            check_clean_relative(p, "outputs")
            if not any(is_path_prefix(s, p) for s in self.scratch_paths):
                raise InvalidRequest(f"outputs: {p!r} is not inside any scratch path")
        _check_sorted_unique(self.outputs, "outputs")
        _check_sorted_unique(tuple(e.key for e in self.environment_vars), "environment_vars")
        _check_sorted_unique(tuple(f.path for f in self.additional_files), "additional_files")
        for f in self.additional_files:
            if is_path_prefix(self.inputs_dir, f.path):
                raise InvalidRequest(f"additional_files: {f.path!r} is inside inputs_dir")
        for needle in self.refscan_needles:
            if not needle:
                raise InvalidRequest("refscan_needles: empty needle")
        self._check_caches()

    def _check_caches(self) -> None:
        """Sorted unique names; no cache inside another, no scratch path or output inside a
        cache, no overlap with inputs_dir (a cache may lie inside a scratch path)."""
        if not all(isinstance(c, CacheMount) for c in self.caches):
            raise InvalidRequest("caches: expected CacheMount entries")
        _check_sorted_unique(tuple(c.name for c in self.caches), "caches")
        for c in self.caches:
            for other in self.caches:
                if other is not c and is_path_prefix(c.path, other.path):
                    raise InvalidRequest(f"caches: {other.name!r} is inside cache {c.name!r}")
            inputs = self.inputs_dir
            for p in self.scratch_paths:
                if is_path_prefix(c.path, p):
                    raise InvalidRequest(f"caches.{c.name}: scratch path {p!r} is inside it")
            if is_path_prefix(c.path, inputs) or is_path_prefix(inputs, c.path):
                raise InvalidRequest(f"caches.{c.name}: {c.path!r} overlaps inputs_dir")
            for p in self.outputs:
                if is_path_prefix(c.path, p):
                    raise InvalidRequest(f"caches.{c.name}: output {p!r} is inside the cache")

    @property
    def env(self) -> dict[str, bytes]:
        """Environment as a dict (sorted by key)."""
        return {e.key: e.value for e in self.environment_vars}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the YAML/JSON file format)."""
        c = self.constraints
        d: dict[str, Any] = {
            "inputs": {n: node_to_dict(node) for n, node in self.inputs.items()},
            "command_args": list(self.command_args),
            "working_dir": self.working_dir,
            "scratch_paths": list(self.scratch_paths),
            "inputs_dir": self.inputs_dir,
            "outputs": list(self.outputs),
            "environment_vars": {e.key: _bytes_out(e.value) for e in self.environment_vars},
            "constraints": {
                "system": c.system,
                "min_memory": c.min_memory,
                "available_ro_paths": list(c.available_ro_paths),
                "network_access": c.network_access,
                "provide_bin_sh": c.provide_bin_sh,
            },
            "additional_files": {f.path: _bytes_out(f.contents) for f in self.additional_files},
            "refscan_needles": list(self.refscan_needles),
        }
        if self.caches:  # only when used, so requests without caches keep their digests
            d["caches"] = {c.name: c.path for c in self.caches}
        if self.reject_writable_outputs:  # only when set: other digests stay as they were
            d["reject_writable_outputs"] = True
        if limits := self.limits.to_dict():
            d["limits"] = limits
        return d

    def canonical_json(self) -> bytes:
        """Deterministic JSON encoding (sorted keys, no whitespace) of what the build is,
        without its ``limits`` (they decide whether it may finish, not what it makes)."""
        d = self.to_dict()
        d.pop("limits", None)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> Digest:
        """Stable identity of the request (blake3 of ``canonical_json``): the cache key."""
        return Digest.of(self.canonical_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "request") -> BuildRequest:
        """Build from the file format; unknown keys and wrong types raise InvalidRequest."""
        from pytest_ocibuild.build.request_io import request_from_dict

        return request_from_dict(data, source=source)


@dataclass(frozen=True, slots=True, kw_only=True)
class Build:
    """A finished, successful build: output nodes in the order of ``request.outputs``."""

    request: BuildRequest
    outputs: tuple[Node, ...]
    outputs_needles: tuple[tuple[int, ...], ...]  # per output: indexes into refscan_needles
    exit_code: int = 0
    duration: float = 0.0  # seconds of runtime (runc run)
    log_path: str | None = None
    cached: bool = False  # True: taken from the result cache, nothing ran

    def output(self, path: str) -> Node:
        """The node produced for output ``path`` (KeyError if not an output)."""
        return self.outputs[self.request.outputs.index(path)]

    def references(self, path: str) -> tuple[str, ...]:
        """The refscan needles found in output ``path``."""
        idx = self.outputs_needles[self.request.outputs.index(path)]
        return tuple(self.request.refscan_needles[i] for i in idx)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: request digest, outputs with nodes and needles found."""
        return {
            "request": self.request.digest.hex,
            "outputs": {
                p: {**node_to_dict(n), "needles": list(self.references(p))}
                for p, n in zip(self.request.outputs, self.outputs, strict=True)
            },
            "exit_code": self.exit_code,
            "duration": round(self.duration, 3),
            "log": self.log_path,
            "cached": self.cached,
        }


def node_to_dict(node: Node) -> dict[str, Any]:
    """``{"type": "file"|"directory"|"symlink", ...}`` with hex digests."""
    if isinstance(node, FileNode):
        return {"type": "file", "digest": node.digest.hex, "size": node.size,
                "executable": node.executable}
    if isinstance(node, DirectoryNode):
        return {"type": "directory", "digest": node.digest.hex, "size": node.size}
    return {"type": "symlink", "target": _bytes_out(node.target)}


def _bytes_out(value: bytes) -> str | dict[str, str]:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}
