"""Load and dump BuildRequests as YAML/JSON files; every problem is one InvalidRequest line."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.env_values import env_value
from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.build.request import (
    AdditionalFile,
    BuildRequest,
    CacheMount,
    Constraints,
    EnvVar,
)
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.errors import InvalidRequest, OcibuildError

_FIELDS = {
    "inputs", "command_args", "working_dir", "scratch_paths", "inputs_dir", "outputs",
    "environment_vars", "constraints", "additional_files", "refscan_needles", "caches",
    "limits", "reject_writable_outputs",
}
_CONSTRAINTS = {"system", "min_memory", "available_ro_paths", "network_access", "provide_bin_sh"}


def bytes_in(value: Any, what: str) -> bytes:
    """A str (UTF-8) or ``{"base64": ...}`` as bytes."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    if isinstance(value, Mapping) and set(value) == {"base64"}:
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidRequest(f"{what}: invalid base64") from None
    raise InvalidRequest(f"{what}: expected a string, got {type(value).__name__}")


HostIngest = Callable[[Path], Node]


def node_from_dict(
    data: Any, what: str, *, ingest: HostIngest | None = None, base: Path | None = None
) -> Node:
    """Inverse of ``node_to_dict``.

    With ``ingest``, ``{"path": P}`` ingests host path P (relative to ``base``).
    """
    if isinstance(data, Mapping) and set(data) == {"path"} and ingest is not None:
        host = Path(str(data["path"]))
        if base is not None and not host.is_absolute():
            host = base / host
        if not host.exists() and not host.is_symlink():
            raise InvalidRequest(f"{what}: host path {host} does not exist")
        return ingest(host)
    if not isinstance(data, Mapping) or "type" not in data:
        raise InvalidRequest(f"{what}: a node is a mapping with 'type' (or 'path' to a host file)")
    kind = data["type"]
    if kind not in ("file", "directory", "symlink"):
        raise InvalidRequest(f"{what}: unknown node type {kind!r}")
    try:
        if kind == "symlink":
            return SymlinkNode(bytes_in(data.get("target"), f"{what}.target"))
        digest = Digest.parse(str(data["digest"]))
        size = data["size"]
        if not isinstance(size, int) or size < 0:
            raise InvalidRequest(f"{what}.size: {size!r} is not a size")
        if kind == "file":
            return FileNode(digest, size, bool(data.get("executable", False)))
        if kind == "directory":
            return DirectoryNode(digest, size)
    except KeyError as e:
        raise InvalidRequest(f"{what}: missing {e.args[0]!r}") from None
    except ValueError as e:
        raise InvalidRequest(f"{what}: {e}") from None
    raise InvalidRequest(f"{what}: unknown node type {kind!r}")


def _list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{key}: expected a list of strings")
    return tuple(value)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{key}: expected a mapping")
    return value


def request_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "request",
    ingest: HostIngest | None = None,
    base: Path | None = None,
) -> BuildRequest:
    """Build a BuildRequest from the file format; errors are prefixed with ``source``."""
    try:
        if not isinstance(data, Mapping):
            raise InvalidRequest("expected a mapping at the top level")
        unknown = set(data) - _FIELDS
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        cons = _mapping(data, "constraints")
        bad = set(cons) - _CONSTRAINTS
        if bad:
            raise InvalidRequest(f"constraints: unknown field(s): {', '.join(sorted(bad))}")
        env = _mapping(data, "environment_vars")
        files = _mapping(data, "additional_files")
        kwargs: dict[str, Any] = {}
        for key in ("working_dir", "inputs_dir"):
            if key in data:
                kwargs[key] = data[key]
        if "scratch_paths" in data:
            kwargs["scratch_paths"] = _list(data, "scratch_paths")
        caches = _mapping(data, "caches")  # name -> path in the sandbox
        if caches:
            kwargs["caches"] = tuple(CacheMount(str(n), p if isinstance(p, str) else repr(p))
                                     for n, p in sorted(caches.items(),
                                                        key=lambda kv: str(kv[0]).encode()))
        if "reject_writable_outputs" in data:
            kwargs["reject_writable_outputs"] = _flag(data, "reject_writable_outputs")
        if data.get("limits") is not None:
            kwargs["limits"] = Limits.from_dict(data["limits"])
        return BuildRequest(
            inputs={str(n): node_from_dict(v, f"inputs.{n}", ingest=ingest, base=base)
                    for n, v in _mapping(data, "inputs").items()},
            command_args=_list(data, "command_args"),
            outputs=_list(data, "outputs"),
            environment_vars=tuple(
                EnvVar(str(k), env_value(v, str(k)))
                for k, v in sorted(env.items(), key=lambda kv: str(kv[0]).encode())
            ),
            constraints=Constraints(
                system=str(cons.get("system", "x86_64-linux")),
                min_memory=cons.get("min_memory", 0),
                available_ro_paths=_list(cons, "available_ro_paths"),
                network_access=bool(cons.get("network_access", False)),
                provide_bin_sh=bool(cons.get("provide_bin_sh", False)),
            ),
            additional_files=tuple(
                AdditionalFile(str(p), bytes_in(v, f"additional_files.{p}"))
                for p, v in sorted(files.items(), key=lambda kv: str(kv[0]).encode())
            ),
            refscan_needles=_list(data, "refscan_needles"),
            **kwargs,
        )
    except OcibuildError as e:
        raise InvalidRequest(f"{source}: {e.message}") from None


def load_request(path: Path, *, ingest: HostIngest | None = None) -> BuildRequest:
    """Read a request from a .yaml/.yml/.json file.

    With ``ingest``, inputs may be given as ``{path: P}``: P (relative to the file's directory)
    is ingested into the store and replaced by its node.
    """
    from pytest_ocibuild.build.yaml_load import YamlLoadError, load_json, load_yaml, read_bounded

    try:
        raw = read_bounded(path)
        data = load_json(raw) if path.suffix == ".json" else load_yaml(raw)
    except OSError as e:
        raise InvalidRequest(f"{path}: cannot read: {e.strerror or e}") from None
    except YamlLoadError as e:
        raise InvalidRequest(f"{e.where(path)}: malformed file: {e.problem}") from None
    return request_from_dict(data, source=str(path), ingest=ingest, base=path.parent)


def dump_request(request: BuildRequest, path: Path) -> None:
    """Write a request as YAML (or JSON for a .json path)."""
    data = request.to_dict()
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False))


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key}: expected true or false, got {value!r}")
    return value
