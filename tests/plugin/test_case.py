"""YAML case parsing: valid cases, and problems reported as file:line without crashing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_ocibuild.errors import CaseError
from pytest_ocibuild.plugin.case import (
    BadCase,
    Case,
    CaseInput,
    HostInput,
    InlineInput,
    load_case_file,
    parse_tree,
)

GOOD = """\
x-shared: &bb
  busybox: {path: /bin/busybox}

first:
  description: two inputs, unsorted outputs
  inputs:
    <<: *bb
    data: {path: data/file}
    src: {tree: {a/b.txt: "b", run: {contents: "x", executable: true}, l: {symlink: a}}}
    dep: {from_case: "other.yaml::second", output: build/o}
  command: [/inputs/busybox, "true"]
  outputs: [build/z, build/a]
  env: {B: "2", A: "1"}
  timeout: 2.5
  expect:
    outputs:
      build/a: {x: "1", d: {dir: true}}
      build/z: {.: {digest: "%s", size: 3}}
    log: ["^ok$"]

second:
  command: [x]
  expect:
    failure: {reason: exit-code, exit_code: 2, message: "code 2"}
""" % ("ab" * 32)


def load(tmp_path: Path, text: str) -> list[Case | BadCase]:
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    return load_case_file(path)


def test_valid_cases(tmp_path: Path) -> None:
    first, second = load(tmp_path, GOOD)
    assert isinstance(first, Case) and isinstance(second, Case)
    assert (first.name, first.line, second.line) == ("first", 4, 21)
    assert first.inputs["busybox"] == HostInput(Path("/bin/busybox"))
    assert first.inputs["data"] == HostInput(tmp_path / "data/file")
    assert first.inputs["dep"] == CaseInput("other.yaml::second", "build/o")
    src = first.inputs["src"]
    assert isinstance(src, InlineInput)
    assert src.entries["run"].executable and src.entries["l"].target == b"a"
    assert first.request["outputs"] == ["build/a", "build/z"]  # sorted for the request
    assert first.request["environment_vars"] == {"B": "2", "A": "1"}
    assert first.timeout == 2.5
    assert first.expect.outputs["build/z"]["."].digest == "ab" * 32
    assert first.expect.failure is None and first.expect.log[0].pattern == "^ok$"
    failure = second.expect.failure
    assert failure is not None and (failure.reason, failure.exit_code) == ("exit-code", 2)


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("  command: x\n", 2, "command: 'x' is not of type 'array'"),
        ("  command: [x]\n  comand: [y]\n", 3, "unknown key(s) comand"),
        ("  command: [x]\n  outputs: [elsewhere/o]\n", 3, "not inside any scratch path"),
        ("  command: [x]\n  outputs: [/abs]\n", 3, "'/abs' must be a relative path"),
        ("  command: [x]\n  inputs:\n    i: {path: a, tree: {}}\n", 4, "exactly one of"),
        ("  command: [x]\n  inputs:\n    i: {tree: {f: {digest: '%s'}}}\n" % ("0" * 64), 4,
         "need contents"),
        ("  command: [x]\n  expect:\n    log: ['(']\n", 4, "bad regular expression"),
        ("  command: [x]\n  expect:\n    outputs: {build/o: {}}\n", 4, "not one of the case's"),
        ("  command: [x]\n  outputs: [build/o]\n  expect:\n    outputs:\n      build/o:\n"
         "        f: {contents: 1}\n", 7, "is not a string or {base64: ...}"),
        ("  command: [x]\n  outputs: [build/o]\n  expect:\n    outputs:\n      build/o:\n"
         "        f: {symlink: a, executable: true}\n", 7, "symlink takes no other keys"),
        ("  command: [x]\n  outputs: [build/o]\n  expect:\n    outputs:\n      build/o:\n"
         "        f: x\n        f/g: y\n", 8, "'f' is not a directory"),
        ("  command: [x]\n  expect:\n    failure: {reason: crashed}\n", 4, "'crashed' is not one"),
        ("  command: [x]\n  timeout: 0\n", 3, "timeout: 0 is less than or equal"),
    ],
)
def test_bad_case_cites_line(tmp_path: Path, body: str, line: int, message: str) -> None:
    ok, bad = load(tmp_path, "ok:\n  command: [x]\nbad:\n" + body.replace("\n  ", "\n  "))[:2]
    assert isinstance(ok, Case)
    assert isinstance(bad, BadCase)
    assert bad.message.startswith(f"{tmp_path / 'cases.yaml'}:{line + 2}: case 'bad': ")
    assert message in bad.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [\n", r":2: malformed YAML"),
        ("a:\n  command: [x]\na:\n  command: [y]\n", r":3: malformed YAML: duplicate key 'a'"),
        ("- just\n- a list\n", r":1: expected a mapping of case names to cases"),
        ("", r":1: expected a mapping"),
        ("a: !!python/object:os.system {}\n", r":1: malformed YAML"),
    ],
)
def test_bad_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CaseError, match=re.escape(message)):
        load(tmp_path, text)


def test_bad_case_name(tmp_path: Path) -> None:
    (bad,) = load(tmp_path, "'has space':\n  command: [x]\n")
    assert isinstance(bad, BadCase) and "case names use letters" in bad.message


def test_parse_tree_notation() -> None:
    tree = parse_tree({"a/b": "x", "e": {"dir": True}, "s": {"symlink": "a"}})
    assert {k: v.kind for k, v in tree.items()} == {"a/b": "file", "e": "dir", "s": "symlink"}
    with pytest.raises(CaseError, match=re.escape("tree: ../x: path: '../x' is not a clean path")):
        parse_tree({"../x": "y"})
