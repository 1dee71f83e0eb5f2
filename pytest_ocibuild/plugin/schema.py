"""The YAML case file format: a line-tracking loader and the JSON schema every case must satisfy.

``load_yaml`` returns plain data plus ``Lines``: the line of every mapping key and list item, so
a schema error can be reported as ``file:line``. ``CASE_SCHEMA`` is documented in docs/plugin.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from pytest_ocibuild.build.runtime import RUNTIMES
from pytest_ocibuild.build.yaml_load import LIMITS, Limits, YamlLoadError, compose, construct
from pytest_ocibuild.errors import BUILD_FAILURE_REASONS
from pytest_ocibuild.plugin.quickcheck import surely_valid

Path_ = tuple[str | int, ...]  # a location inside the loaded data: keys and list indexes


@dataclass
class Lines:
    """1-based line numbers of the nodes of a YAML document, keyed by data path."""

    at: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path not in self.at and path:
            path = path[:-1]
        return self.at.get(path, 1)


class YamlError(Exception):
    """The file is not YAML we can load; ``line`` is 1-based."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def load_yaml(text: str | bytes, limits: Limits = LIMITS) -> tuple[Any, Lines]:
    """Parse one YAML document (safe tags only); duplicate keys are an error.

    Bounded by ``limits`` (size, nodes after alias expansion, nesting: build.yaml_load);
    non-UTF-8 bytes are a YamlError citing their line.
    """
    try:
        with compose(text, limits) as (loader, node):
            lines = Lines()
            data = None if node is None else _build(loader, node, (), lines)
    except YamlLoadError as e:
        raise YamlError(e.problem, e.line or 1) from None
    return data, lines


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: Lines) -> Any:
    lines.at.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise YamlError(f"unsupported tag {node.tag}", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves '<<' merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = construct(loader, key_node)
            if not isinstance(key, str | int | float | bool):
                raise YamlError("mapping keys must be scalars", key_node.start_mark.line + 1)
            key = str(key)
            if key in out:
                raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1)
            lines.at[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, (*path, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), lines) for i, item in enumerate(node.value)]
    return construct(loader, node)


_BYTES = {
    "anyOf": [
        {"type": "string"},
        {"type": "object", "properties": {"base64": {"type": "string"}},
         "required": ["base64"], "additionalProperties": False},
    ],
}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_REL = {"type": "string", "pattern": r"^[^/]"}
_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# An entry of a tree: a string is a regular file's contents.
_ENTRY = {
    "anyOf": [
        {"type": "string"},
        {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            "contents": _BYTES, "digest": _HEX, "size": {"type": "integer", "minimum": 0},
            "executable": {"type": "boolean"}, "symlink": {"type": "string", "minLength": 1},
            "dir": {"const": True},
        }},
    ],
}
_TREE = {"type": "object", "additionalProperties": _ENTRY}
_INPUT = {
    "type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
        "path": {"type": "string", "minLength": 1},
        "tree": _TREE,
        "contents": _BYTES,
        "executable": {"type": "boolean"},
        "symlink": {"type": "string", "minLength": 1},
        "from_case": {"type": "string", "minLength": 1},
        "output": _REL,
    },
}
_SIZE = {"anyOf": [{"type": "integer", "exclusiveMinimum": 0},
                   {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[kmgtKMGT]?(i?[bB])?\s*$"}]}
_FAILURE = {
    "type": "object", "additionalProperties": False, "required": ["reason"], "properties": {
        "reason": {"enum": [*BUILD_FAILURE_REASONS, "invalid-request"]},
        "exit_code": {"type": "integer"},
        "message": {"type": "string"},
    },
}
_EXPECT = {
    "type": "object", "additionalProperties": False, "properties": {
        "failure": _FAILURE,
        "log": _STRINGS,
        "log_not": _STRINGS,
        "stdout": _STRINGS,
        "stdout_not": _STRINGS,
        "stderr": _STRINGS,
        "stderr_not": _STRINGS,
        "outputs": {"type": "object", "additionalProperties": _TREE},
        "references": {"type": "object", "additionalProperties": _STRINGS},
        "root_digests": {"type": "object", "additionalProperties": _HEX},
    },
}
_NONEMPTY = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
# ``image:`` (plugin/imagecase.py, docs/image.md): export the outputs as an image, run in it
IMAGE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "properties": {
        "max_layers": {"type": "integer", "minimum": 1},
        "popularity": {"type": "object",
                       "additionalProperties": {"type": "integer", "minimum": 0}},
        "cmd": _NONEMPTY, "env": _STRINGS, "run": _NONEMPTY,
        "layers": {"anyOf": [{"type": "integer", "minimum": 1},
                             {"type": "array", "items": _NONEMPTY}]},
        "stdout": _STRINGS, "stderr": _STRINGS, "exit_code": {"type": "integer"},
    },
}
CASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["command"],
    "properties": {
        "description": {"type": "string"},
        "marks": {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_]\w*$"}},
        "inputs": {"type": "object", "additionalProperties": _INPUT},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "working_dir": _REL,
        "inputs_dir": _REL,
        "scratch_paths": {"type": "array", "items": _REL, "minItems": 1},
        "outputs": {"type": "array", "items": _REL},
        "env": {"type": "object", "additionalProperties": _BYTES},
        "additional_files": {"type": "object", "additionalProperties": _BYTES},
        "refscan_needles": _STRINGS,
        "constraints": {
            "type": "object", "additionalProperties": False, "properties": {
                "system": {"type": "string"},
                "min_memory": {"type": "integer", "minimum": 0},
                "available_ro_paths": _STRINGS,
                "network_access": {"type": "boolean"},
                "provide_bin_sh": {"type": "boolean"},
            },
        },
        "limits": {
            "type": "object", "additionalProperties": False, "properties": {
                "pids": {"type": "integer", "exclusiveMinimum": 0},
                "memory": _SIZE,
                "disk": _SIZE,
                "entries": {"type": "integer", "exclusiveMinimum": 0},
                "max_silent_time": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "provider": {"enum": ["materialize", "fuse"]},
        "runtime": {"enum": list(RUNTIMES)},
        "expect": _EXPECT,
        "image": IMAGE_SCHEMA,
    },
}


def schema_errors(case: Any, schema: dict[str, Any] = CASE_SCHEMA) -> Iterator[tuple[Path_, str]]:
    """Problems with one case as ``(path inside the case, message)``, in document order.

    A case ``quickcheck`` finds valid has none; only for the others is jsonschema imported.
    """
    if surely_valid(case, schema):
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(case), key=lambda e: list(map(str, e.path))):
        yield _message(jsonschema.exceptions.best_match([error]))


def _message(error: Any) -> tuple[Path_, str]:
    """A jsonschema ValidationError as ``(path, message)`` in the case file's terms."""
    path = tuple(error.absolute_path)
    where = ".".join(map(str, path))
    prefix = f"{where}: " if where else ""
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = sorted(set(error.instance) - set(known))
        return (*path, extra[0]), (
            f"{prefix}unknown key(s) {', '.join(extra)} (expected: {', '.join(sorted(known))})")
    if error.schema is _BYTES:
        return path, f"{prefix}{error.instance!r:.60} is not a string or {{base64: ...}}"
    if error.schema is _ENTRY:
        return path, (f"{prefix}{error.instance!r:.60} is not a file's contents or a mapping "
                      "with contents, digest, symlink or dir")
    pattern = error.schema.get("pattern") if error.validator == "pattern" else None
    if pattern == _REL["pattern"]:
        return path, f"{prefix}{error.instance!r} must be a relative path"
    if pattern == _HEX["pattern"]:
        return path, f"{prefix}{error.instance!r:.70} is not a 64-character hex blake3 digest"
    return path, f"{prefix}{error.message}"
