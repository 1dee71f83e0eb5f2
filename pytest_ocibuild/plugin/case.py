"""YAML build cases: a file maps case names to cases; each becomes a ``Case`` (or a ``BadCase``).

Every problem is reported as ``file:line: case 'name': what is wrong``. The format is documented
in docs/plugin.md; ``schema.CASE_SCHEMA`` is its machine-readable half, the checks here the rest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.request import check_clean_relative
from pytest_ocibuild.build.request_io import bytes_in, request_from_dict
from pytest_ocibuild.build.yaml_load import YamlLoadError, read_bounded
from pytest_ocibuild.errors import CaseError, InvalidRequest
from pytest_ocibuild.plugin.schema import Lines, Path_, YamlError, load_yaml, schema_errors

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ROOT = "."  # tree key meaning "the output itself" (a file or symlink output)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One expected (or inline input) tree entry; ``None`` fields are not checked."""

    kind: str  # "file" | "dir" | "symlink"
    contents: bytes | None = None
    digest: str | None = None  # hex blake3 of the contents
    size: int | None = None
    executable: bool = False
    target: bytes | None = None


@dataclass(frozen=True, slots=True)
class HostInput:
    """A host file or directory, ingested into the store."""

    path: Path


@dataclass(frozen=True, slots=True)
class InlineInput:
    """A tree written in the case (``tree``), or a single file or symlink (key ``.``)."""

    entries: Mapping[str, Entry]


@dataclass(frozen=True, slots=True)
class CaseInput:
    """An output of another case: ``ref`` is ``name`` or ``other.yaml::name``."""

    ref: str
    output: str | None


InputSpec = HostInput | InlineInput | CaseInput


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """The build must fail with this reason (and exit code / message, when given)."""

    reason: str
    exit_code: int | None = None
    message: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """What a case checks after its build."""

    failure: Failure | None = None
    log: tuple[re.Pattern[str], ...] = ()  # the combined log: stdout and stderr
    log_not: tuple[re.Pattern[str], ...] = ()
    stdout: tuple[re.Pattern[str], ...] = ()
    stdout_not: tuple[re.Pattern[str], ...] = ()
    stderr: tuple[re.Pattern[str], ...] = ()
    stderr_not: tuple[re.Pattern[str], ...] = ()
    outputs: Mapping[str, Mapping[str, Entry]] = field(default_factory=dict)
    references: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    root_digests: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """A valid case: the request (inputs still unresolved) and its expectations."""

    name: str
    path: Path
    line: int
    description: str = ""
    marks: tuple[str, ...] = ()
    inputs: Mapping[str, InputSpec] = field(default_factory=dict)
    request: Mapping[str, Any]  # request-file fields, except inputs (see request_io)
    timeout: float | None = None
    provider: str | None = None  # input provider; None: the session's
    runtime: str | None = None  # sandbox runtime (build.runtime); None: the session's
    expect: Expectation = field(default_factory=Expectation)


@dataclass(frozen=True, slots=True, kw_only=True)
class BadCase:
    """A case that failed validation: collected as one failing item."""

    name: str
    path: Path
    line: int
    message: str  # "file:line: case 'x': problem"


def load_case_file(path: Path) -> list[Case | BadCase]:
    """All cases of ``path``; raises CaseError (citing file:line) if the file itself is bad."""
    try:
        data, lines = load_yaml(read_bounded(path))
    except OSError as e:
        raise CaseError(f"{path}: cannot read: {e.strerror or e}") from None
    except YamlLoadError as e:  # larger than the size bound
        raise CaseError(f"{path}:1: malformed YAML: {e.problem}") from None
    except YamlError as e:
        raise CaseError(f"{path}:{e.line}: malformed YAML: {e}") from None
    if not isinstance(data, dict) or not data:
        raise CaseError(f"{path}:1: expected a mapping of case names to cases")
    cases: list[Case | BadCase] = []
    for name, body in data.items():
        if name.startswith("x-"):
            continue  # a place for YAML anchors shared by cases
        line = lines.line((name,))
        try:
            if not NAME.match(name):
                raise _Problem((), "case names use letters, digits, '_', '-' and '.'")
            if isinstance(body, dict) and "image" in body:  # plugin/imagecase.py
                from pytest_ocibuild.plugin.imagecase import parse_image_case

                cases.append(parse_image_case(name, body, path, lines))  # type: ignore[arg-type]
                continue
            if isinstance(body, dict) and "nix" in body:  # a Nix case (plugin/nixcase.py)
                from pytest_ocibuild.plugin.nixcase import parse_nix_case

                cases.append(parse_nix_case(name, body, path, lines))  # type: ignore[arg-type]
                continue
            cases.append(_parse_case(name, body, path, lines))
        except _Problem as p:
            where = lines.line((name, *p.path))
            message = f"{path}:{where}: case {name!r}: {p.message}"
            cases.append(BadCase(name=name, path=path, line=line, message=message))
    return cases


class _Problem(Exception):
    def __init__(self, path: Path_, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _parse_case(name: str, body: Any, path: Path, lines: Lines) -> Case:
    for where, message in schema_errors(body):
        raise _Problem(where, message)
    inputs = {n: _input(n, spec, path) for n, spec in body.get("inputs", {}).items()}
    request = _request_fields(body)
    expect_invalid = body.get("expect", {}).get("failure", {}).get("reason") == "invalid-request"
    try:
        request_from_dict(request, source="")
    except InvalidRequest as e:
        if expect_invalid:
            return _case(name, body, path, lines, inputs, request)
        text = e.message.removeprefix(": ")
        key = text.split(":", 1)[0].split(".")[0]
        fields = {"command_args": "command", "environment_vars": "env"}
        raise _Problem((fields.get(key, key),), text) from None
    return _case(name, body, path, lines, inputs, request)


def _case(name: str, body: Mapping[str, Any], path: Path, lines: Lines,
          inputs: dict[str, InputSpec], request: dict[str, Any]) -> Case:
    return Case(
        name=name, path=path, line=lines.line((name,)),
        description=body.get("description", ""), marks=tuple(body.get("marks", ())),
        inputs=inputs, request=request, timeout=body.get("timeout"),
        provider=body.get("provider"), runtime=body.get("runtime"),
        expect=_expectation(body.get("expect", {}), tuple(request.get("outputs", ()))),
    )


def _sorted(items: Any) -> list[str]:
    return sorted(items, key=lambda s: s.encode())


def _request_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The case's request part in the request-file format of ``request_io``."""
    request: dict[str, Any] = {"command_args": list(body["command"])}
    for key in ("working_dir", "inputs_dir", "additional_files", "refscan_needles", "limits"):
        if key in body:
            request[key] = body[key]
    for key in ("scratch_paths", "outputs"):
        if key in body:
            request[key] = _sorted(body[key])
    if "env" in body:
        request["environment_vars"] = body["env"]
    if "constraints" in body:
        cons = dict(body["constraints"])
        if "available_ro_paths" in cons:
            cons["available_ro_paths"] = _sorted(cons["available_ro_paths"])
        request["constraints"] = cons
    return request


def _input(name: str, spec: Mapping[str, Any], case_path: Path) -> InputSpec:
    where: Path_ = ("inputs", name)
    kinds = [k for k in ("path", "tree", "contents", "symlink", "from_case") if k in spec]
    if len(kinds) != 1:
        raise _Problem(where, "an input has exactly one of: path, tree, contents, symlink, "
                              f"from_case (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    extra = set(spec) - {kind} - ({"executable"} if kind == "contents" else set()) - (
        {"output"} if kind == "from_case" else set())
    if extra:
        raise _Problem(where, f"{', '.join(sorted(extra))} cannot be used with {kind}")
    if kind == "path":
        host = Path(spec["path"])
        return HostInput(host if host.is_absolute() else case_path.parent / host)
    if kind == "from_case":
        output = spec.get("output")
        if output is not None:
            _clean(output, (*where, "output"))
        return CaseInput(spec["from_case"], output)
    if kind == "tree":
        entries = _tree(spec["tree"], (*where, "tree"))
        for rel, e in entries.items():
            if e.kind == "file" and e.contents is None:
                raise _Problem((*where, "tree", rel), "input files need contents, not a digest")
        return InlineInput(entries)
    return InlineInput({ROOT: _entry(spec, where)})


def parse_tree(notation: Mapping[str, Any], what: str = "tree") -> dict[str, Entry]:
    """A tree written in case notation (``{path: contents | {...}}``); CaseError if invalid."""
    if not isinstance(notation, Mapping):
        raise CaseError(f"{what}: expected a mapping of paths to entries")
    try:
        for rel, value in notation.items():
            if not isinstance(value, str | Mapping):
                raise _Problem((rel,), f"{value!r:.40} is not contents or a mapping")
        return _tree(notation, ())
    except _Problem as p:
        raise CaseError(f"{what}: {'/'.join(map(str, p.path))}: {p.message}") from None


def _clean(path: str, where: Path_) -> str:
    try:
        return check_clean_relative(path, "path")
    except InvalidRequest as e:
        raise _Problem(where, e.message) from None


def _tree(tree: Mapping[str, Any], where: Path_) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for rel, value in tree.items():
        if rel != ROOT:
            _clean(rel, (*where, rel))
        entries[rel] = _entry(value, (*where, rel))
    if ROOT in entries and len(entries) > 1:
        raise _Problem(where, f"'{ROOT}' (the output itself) cannot be combined with paths")
    for rel in entries:
        parent = rel.rpartition("/")[0]
        while parent:
            if parent in entries and entries[parent].kind != "dir":
                raise _Problem((*where, rel), f"{parent!r} is not a directory")
            parent = parent.rpartition("/")[0]
    return entries


def _entry(value: Any, where: Path_) -> Entry:
    if isinstance(value, str):
        return Entry(kind="file", contents=value.encode())
    kinds = [k for k in ("contents", "digest", "symlink", "dir") if k in value]
    if len(kinds) != 1:
        raise _Problem(where, "an entry has exactly one of: contents, digest, symlink, dir "
                              f"(got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    if kind in ("symlink", "dir") and set(value) - {kind}:
        raise _Problem(where, f"{kind} takes no other keys")
    if kind == "symlink":
        return Entry(kind="symlink", target=value["symlink"].encode())
    if kind == "dir":
        return Entry(kind="dir")
    contents = None
    if kind == "contents":
        try:
            contents = bytes_in(value["contents"], "contents")
        except InvalidRequest as e:
            raise _Problem((*where, "contents"), e.message) from None
    return Entry(kind="file", contents=contents, digest=value.get("digest"),
                 size=value.get("size"), executable=value.get("executable", False))


def _regexes(patterns: list[str], where: Path_) -> tuple[re.Pattern[str], ...]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern, re.MULTILINE))
        except re.error as e:
            raise _Problem((*where, i), f"bad regular expression {pattern!r}: {e}") from None
    return tuple(out)


def _expectation(expect: Mapping[str, Any], outputs: tuple[str, ...]) -> Expectation:
    for key in ("outputs", "references", "root_digests"):
        for out in expect.get(key, {}):
            if out not in outputs:
                raise _Problem(("expect", key, out),
                               f"{out!r} is not one of the case's outputs {list(outputs)}")
    failure = None
    if "failure" in expect:
        f = expect["failure"]
        if set(expect) & {"outputs", "references", "root_digests"}:
            raise _Problem(("expect", "failure"), "a failing build has no outputs to check")
        message = None
        if "message" in f:
            message = _regexes([f["message"]], ("expect", "failure", "message"))[0]
        failure = Failure(reason=f["reason"], exit_code=f.get("exit_code"), message=message)
    return Expectation(
        failure=failure,
        log=_regexes(expect.get("log", []), ("expect", "log")),
        log_not=_regexes(expect.get("log_not", []), ("expect", "log_not")),
        **{key: _regexes(expect.get(key, []), ("expect", key))
           for key in ("stdout", "stdout_not", "stderr", "stderr_not")},
        outputs={o: _tree(t, ("expect", "outputs", o))
                 for o, t in expect.get("outputs", {}).items()},
        references={o: tuple(r) for o, r in expect.get("references", {}).items()},
        root_digests=dict(expect.get("root_digests", {})),
    )
