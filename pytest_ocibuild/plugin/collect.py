"""Collection of YAML cases: ``CaseFile`` yields one ``CaseItem`` per case.

A case that fails validation becomes an ``InvalidCaseItem`` that fails with ``file:line`` and
the problem; a file that cannot be read or parsed at all becomes a single one. Collection
itself never raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.request import Build
from pytest_ocibuild.errors import BuildFailed, CaseError, InvalidRequest, OcibuildError
from pytest_ocibuild.plugin.case import BadCase, Case
from pytest_ocibuild.plugin.check import Problem, check_outcome, log_tail
from pytest_ocibuild.plugin.runner import get_runner
from pytest_ocibuild.plugin.snapshot import check_spec

RULE = "-" * 8
CASE_KEYS = ("command", "nix")  # one of them is required in every case


def looks_like_cases(path: Path) -> bool:
    """Whether a YAML file holds build cases: a mapping with at least one entry (not an
    ``x-`` one) that is a mapping with ``command`` or ``nix``. A file that cannot be read or
    parsed counts (its one failing item names the problem); other data files do not."""
    import yaml

    from pytest_ocibuild.build.yaml_load import YamlLoadError, load_yaml, read_bounded

    try:
        data = load_yaml(read_bounded(path))
    except (OSError, YamlLoadError, yaml.YAMLError):
        return True
    if not isinstance(data, dict):
        return False
    return any(isinstance(body, dict) and any(k in body for k in CASE_KEYS)
               for name, body in data.items()
               if not (isinstance(name, str) and name.startswith("x-")))


class CaseFile(pytest.File):
    """A YAML file of build cases."""

    def collect(self) -> Iterator[pytest.Item]:
        """One item per case, in file order."""
        try:
            cases = get_runner(self.config).case_file(self.path)
        except CaseError as e:
            yield InvalidCaseItem.from_parent(self, name="invalid-file", message=e.message,
                                              line=_line_of(e.message))
            return
        for case in cases:
            if isinstance(case, BadCase):
                yield InvalidCaseItem.from_parent(self, name=case.name, message=case.message,
                                                  line=case.line)
                continue
            if getattr(case, "is_image", False):  # a case with image: (plugin/imagecase.py)
                from pytest_ocibuild.plugin.imagecase import image_case_item

                yield image_case_item(self, case)  # type: ignore[arg-type]
                continue
            if getattr(case, "is_nix", False):  # a Nix case (plugin/nixcase.py)
                from pytest_ocibuild.plugin.nixcase import nix_case_item

                yield nix_case_item(self, case)  # type: ignore[arg-type]
                continue
            item: pytest.Item
            try:
                item = CaseItem.from_parent(self, name=case.name, case=case)
            except pytest.fail.Exception as e:  # an unregistered mark under --strict-markers
                message = f"{case.path}:{case.line}: case {case.name!r}: {e.msg}"
                item = InvalidCaseItem.from_parent(self, name=case.name, message=message,
                                                   line=case.line)
            yield item


class CaseFailure(Exception):
    """A case ran and did not meet its expectations."""

    def __init__(self, problems: list[Problem], log: Path | None, *, build_failed: bool) -> None:
        super().__init__("; ".join(p.summary for p in problems))
        self.problems = problems
        self.log = log
        self.build_failed = build_failed


class CaseItem(pytest.Item):
    """One build case: check the spec golden, build, compare with the expectations."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.add_marker(pytest.mark.ocibuild(timeout=case.timeout))
        for mark in case.marks:
            self.add_marker(mark)

    def runtest(self) -> None:
        """Run the case; raise CaseFailure listing every unmet expectation."""
        runner = get_runner(self.config)
        case = self.case
        want_invalid = case.expect.failure is not None and (
            case.expect.failure.reason == "invalid-request")
        problems: list[Problem] = []
        outcome: Build | OcibuildError
        try:
            request = runner.request_for(case)
            spec = runner.golden_spec(request)
        except InvalidRequest as e:
            if not want_invalid:
                raise
            outcome = e
        else:
            problems += self._check_spec(spec)
            try:
                outcome = runner.build(case)
            except (BuildFailed, InvalidRequest) as e:
                outcome = e
        problems += check_outcome(case, outcome, runner.store())
        if problems:
            log = getattr(outcome, "log_path", None)
            failed = isinstance(outcome, OcibuildError)
            raise CaseFailure(problems, Path(log) if log else None, build_failed=failed)

    def _check_spec(self, spec: dict[str, Any]) -> list[Problem]:
        mismatch = check_spec(self, spec)
        if mismatch is None:
            return []
        if mismatch.missing:
            return [Problem(
                f"no golden config.json at {mismatch.location} (write it: --snapshot-update)")]
        return [Problem("config.json differs from its golden (accept with --snapshot-update)",
                        f"config.json: - golden {mismatch.location}, + generated",
                        mismatch.diff)]

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        """Problems, tree and spec diffs and the log tail; OcibuildErrors without traceback."""
        err = excinfo.value
        head = f"case {self.case.name!r} ({self.case.path.name}:{self.case.line})"
        if isinstance(err, CaseFailure):
            return render_failure(head, err)
        if isinstance(err, OcibuildError):
            lines = [f"{head}: {err.message}"]
            if err.detail:
                lines += ["", f"{RULE} detail {RULE}", *err.detail.splitlines()]
            return "\n".join(lines)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        """The case's file and (0-based) line, for ``-v`` output and failure headers."""
        return self.path, self.case.line - 1, f"case {self.case.name}"


def render_failure(head: str, failure: CaseFailure) -> str:
    """The text of a failed case: summary first, then each problem's evidence, then the log."""
    problems = failure.problems
    if len(problems) == 1:
        lines = [f"{head}: {problems[0].summary}"]
    else:
        lines = [f"{head}: {len(problems)} problems"]
        lines += [f"  * {p.summary}" for p in problems]
    for p in problems:
        if p.lines:
            lines += ["", f"{RULE} {p.title} {RULE}", *p.lines]
    tail = log_tail(failure.log)
    if failure.log is not None and (tail or failure.build_failed):
        lines += ["", f"{RULE} build log: last {len(tail)} lines of {failure.log} {RULE}"]
        lines += tail or ["(empty)"]
    return "\n".join(lines)


class InvalidCaseItem(pytest.Item):
    """A case (or case file) that did not pass validation: fails with the problem."""

    def __init__(self, *, message: str, line: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message
        self.line = line

    def runtest(self) -> None:
        """Always fails with the validation message."""
        raise CaseError(self.message)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        """Just the message: it already names the file and line."""
        if isinstance(excinfo.value, CaseError):
            return f"invalid case: {excinfo.value.message}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        """The file and line of the problem."""
        return self.path, self.line - 1, f"invalid case {self.name}"


def _line_of(message: str) -> int:
    """The line number in a ``file:line: ...`` message (1 if there is none)."""
    parts = message.split(":", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 1
