"""Nix cases: a YAML case that names a Nix file and attribute instead of a raw request.

    deps-multi:
      nix: {file: ../nix/default.nix, attr: deps.multi, bbdir: auto}
      compare: nix
      expect:
        outputs: {lib: {.: "lib\\n"}}
        references: {dev: [dep-multi, dep-multi-lib]}

The plugin instantiates the derivation (into a private eval store), builds it and its
dependencies in our sandbox, and checks ``expect``. With ``compare: nix`` (or
``--ocibuild-compare-nix`` for every Nix case) it also builds it with the real nix-build and
fails with a difference report when the two disagree. Documented in docs/nix-cases.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.errors import OcibuildError
from pytest_ocibuild.plugin.case import Entry, Failure, _Problem, _regexes, _tree
from pytest_ocibuild.plugin.check import Problem
from pytest_ocibuild.plugin.collect import CaseFailure, CaseItem, InvalidCaseItem
from pytest_ocibuild.plugin.nixbuild import NixSession, compare_all, get_nix_session
from pytest_ocibuild.plugin.nixdiff import nix_unusable, skip_if_nix_unusable, store_name
from pytest_ocibuild.plugin.nixresult import NixBuildResult, NixTarget
from pytest_ocibuild.plugin.schema import _STRINGS, _TREE, CASE_SCHEMA, Lines, schema_errors

_ARGS = {"type": "object", "additionalProperties": {"type": "string"}}
_NIX = {
    "type": "object", "additionalProperties": False, "required": ["file"], "properties": {
        "file": {"type": "string", "minLength": 1},
        "attr": {"type": "string", "minLength": 1},
        "bbdir": {"type": "string", "minLength": 1},
        "args": _ARGS,
        "argstrs": _ARGS,
    },
}
_FAILURE = {
    "type": "object", "additionalProperties": False, "properties": {
        "reason": {"type": "string"},
        "exit_code": {"type": "integer"},
        "message": {"type": "string"},
    },
}
NIX_CASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["nix"],
    "properties": {
        "description": {"type": "string"},
        "marks": CASE_SCHEMA["properties"]["marks"],
        "nix": _NIX,
        "compare": {"enum": ["nix"]},
        "expect": {
            "type": "object", "additionalProperties": False, "properties": {
                "failure": _FAILURE,
                "outputs": {"type": "object", "additionalProperties": _TREE},
                "references": {"type": "object", "additionalProperties": _STRINGS},
            },
        },
    },
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NixExpectation:
    """What a Nix case checks: outputs by output name (``out``, ``dev``...)."""

    failure: Failure | None = None
    outputs: dict[str, dict[str, Entry]] = field(default_factory=dict)
    references: dict[str, tuple[str, ...]] = field(default_factory=dict)  # store path names


@dataclass(frozen=True, slots=True, kw_only=True)
class NixCase:
    """A valid Nix case: what to build, and what to expect of it."""

    name: str
    path: Path
    line: int
    description: str = ""
    marks: tuple[str, ...] = ()
    file: Path
    attr: str | None = None
    bbdir: str | None = None  # "auto", or a directory (relative to the case file)
    args: dict[str, str] = field(default_factory=dict)
    argstrs: dict[str, str] = field(default_factory=dict)
    compare: bool = False
    expect: NixExpectation = field(default_factory=NixExpectation)
    timeout: float | None = None
    is_nix = True
    # another case's ``from_case`` cannot use a Nix case; runner reports this as the reason
    message = "a Nix case cannot be used as a from_case input"

    def target(self, session: NixSession) -> NixTarget:
        """The build target, with ``bbdir: auto`` resolved to the session's busybox dir."""
        args = dict(self.args)
        if self.bbdir == "auto":
            args["bbdir"] = str(session.bbdir)
        elif self.bbdir is not None:
            args["bbdir"] = str(self.path.parent / self.bbdir)
        return NixTarget(file=self.file, attr=self.attr, args=args, argstrs=dict(self.argstrs))


def parse_nix_case(name: str, body: dict[str, Any], path: Path, lines: Lines) -> NixCase:
    """A Nix case (``body`` has a ``nix`` key); raises case._Problem like the other cases."""
    for where, message in schema_errors(body, NIX_CASE_SCHEMA):
        raise _Problem(where, message)
    nix = body["nix"]
    file = Path(nix["file"])
    file = file if file.is_absolute() else path.parent / file
    if not file.exists():
        raise _Problem(("nix", "file"), f"{nix['file']!r}: {file} does not exist")
    if "bbdir" in nix and "bbdir" in nix.get("args", {}):
        raise _Problem(("nix", "bbdir"), "give bbdir either as nix.bbdir or in nix.args")
    if nix.get("bbdir", "auto") != "auto" and not (path.parent / nix["bbdir"]).is_dir():
        raise _Problem(("nix", "bbdir"), f"{nix['bbdir']!r}: use 'auto' or a directory")
    return NixCase(
        name=name, path=path, line=lines.line((name,)),
        description=body.get("description", ""), marks=tuple(body.get("marks", ())),
        file=file.resolve(), attr=nix.get("attr"), bbdir=nix.get("bbdir"),
        args=dict(nix.get("args", {})), argstrs=dict(nix.get("argstrs", {})),
        compare=body.get("compare") == "nix", expect=_expectation(body.get("expect", {})),
    )


def _expectation(expect: dict[str, Any]) -> NixExpectation:
    failure = None
    if "failure" in expect:
        if set(expect) & {"outputs", "references"}:
            raise _Problem(("expect", "failure"), "a failing build has no outputs to check")
        f = expect["failure"]
        message = None
        if "message" in f:
            message = _regexes([f["message"]], ("expect", "failure", "message"))[0]
        failure = Failure(reason=f.get("reason", ""), exit_code=f.get("exit_code"),
                          message=message)
    return NixExpectation(
        failure=failure,
        outputs={o: _tree(t, ("expect", "outputs", o))
                 for o, t in expect.get("outputs", {}).items()},
        references={o: tuple(r) for o, r in expect.get("references", {}).items()},
    )


def nix_case_item(parent: pytest.Collector, case: NixCase) -> pytest.Item:
    """The item of a Nix case (an invalid one if its marks are refused)."""
    try:
        return NixCaseItem.from_parent(parent, name=case.name, case=case)
    except pytest.fail.Exception as e:  # an unregistered mark under --strict-markers
        message = f"{case.path}:{case.line}: case {case.name!r}: {e.msg}"
        return InvalidCaseItem.from_parent(parent, name=case.name, message=message,
                                           line=case.line)


class NixCaseItem(CaseItem):
    """A Nix case: build it in our sandbox, check ``expect``, optionally compare with Nix."""

    case: NixCase  # type: ignore[assignment]

    def runtest(self) -> None:
        """Build; raise CaseFailure listing every unmet expectation and every difference."""
        if shutil.which("nix-instantiate") is None:
            pytest.skip("Nix cases need Nix (nix-instantiate and nix-build on PATH)")
        session = get_nix_session(self.config)
        case = self.case
        target = case.target(session)
        ours = session.outcome(target)
        problems = check_nix_outcome(case, ours)
        if case.compare or compare_all(self.config):
            if shutil.which("nix-build") is None:
                pytest.skip("compare: nix needs nix-build on PATH")
            if not problems:  # else fail for what ours got wrong, whatever Nix can do here
                skip_if_nix_unusable()
            result = None if nix_unusable() else session.compare(target, ours)
            if result is not None and not result.agree:
                problems.append(Problem(
                    "ours and nix-build disagree",
                    f"ours vs nix-build: {target.describe(self.config.rootpath)}",
                    result.differences))
        if problems:
            log = getattr(ours, "log_path", None)
            raise CaseFailure(problems, Path(log) if log else None,
                              build_failed=isinstance(ours, OcibuildError))


def expect_nix_items(items: list[pytest.Item]) -> None:
    """Let the Nix session start evaluating the targets of the Nix case items collected."""
    nix_items = [i for i in items if isinstance(i, NixCaseItem)]
    if nix_items and shutil.which("nix-instantiate") is not None:
        session = get_nix_session(nix_items[0].config)
        session.expect([i.case.target(session) for i in nix_items])


def check_nix_outcome(case: NixCase, ours: NixBuildResult | OcibuildError) -> list[Problem]:
    """Everything about our build (or its failure) that contradicts the case."""
    want = case.expect.failure
    if isinstance(ours, OcibuildError):
        if want is None:
            lines = ours.detail.splitlines()[-25:] if ours.detail else []
            return [Problem(f"the build failed ({ours.reason}): {ours.message}",
                            "failure detail" if lines else "", lines)]
        problems = []
        if want.reason and ours.reason != want.reason:
            problems.append(Problem(f"the build failed with {ours.reason}, expected "
                                    f"{want.reason}: {ours.message}"))
        code = getattr(ours, "exit_code", None)
        if want.exit_code is not None and code != want.exit_code:
            problems.append(Problem(f"exit code {code}, expected {want.exit_code}"))
        if want.message is not None and not want.message.search(ours.message):
            problems.append(Problem(f"failure message {ours.message!r} does not match "
                                    f"{want.message.pattern!r}"))
        return problems
    if want is not None:
        return [Problem("the build succeeded, but a failure was expected")]
    from pytest_ocibuild.plugin.trees import diff_trees

    problems = []
    outputs = sorted(ours.outputs)
    for output, expected in case.expect.outputs.items():
        if output not in ours.outputs:
            problems.append(Problem(f"{output!r} is not an output of {ours.drv_path} "
                                    f"({outputs})"))
            continue
        diff = diff_trees(expected, ours.entries(output))
        if diff:
            problems.append(Problem(f"output {output} differs from the expected tree",
                                    f"output {output} (- expected, + actual)", diff))
    for output, refs in case.expect.references.items():
        if output not in ours.outputs:
            problems.append(Problem(f"{output!r} is not an output of {ours.drv_path} "
                                    f"({outputs})"))
            continue
        found = sorted(store_name(r) for r in ours.references(output))
        if found != sorted(refs):
            problems.append(Problem(f"output {output} references {found}, "
                                    f"expected {sorted(refs)}"))
    return problems
