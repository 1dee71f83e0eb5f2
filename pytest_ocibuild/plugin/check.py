"""Check a case's build outcome against its expectations; every mismatch becomes a Problem.

Problems carry a one-line summary and an optional section (a tree diff, the spec diff, ...)
so the failure report leads with what went wrong and then shows the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pytest_ocibuild.build.logs import read_stream
from pytest_ocibuild.build.request import Build
from pytest_ocibuild.castore.nodes import SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import OcibuildError
from pytest_ocibuild.plugin.case import Case
from pytest_ocibuild.plugin.trees import actual_tree, diff_trees

LOG_TAIL = 25


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a case failed: ``summary`` for the headline, ``lines`` under ``title``."""

    summary: str
    title: str = ""
    lines: list[str] = field(default_factory=list)


def check_outcome(case: Case, outcome: Build | OcibuildError, store: Store) -> list[Problem]:
    """Everything about ``outcome`` (a build, or why there is none) that contradicts the case."""
    expect = case.expect
    problems: list[Problem] = []
    if isinstance(outcome, OcibuildError):
        problems += _check_failure(case, outcome)
    elif expect.failure is not None:
        problems.append(Problem(
            f"the build succeeded, but a failure ({expect.failure.reason}) was expected"))
    else:
        problems += _check_outputs(case, outcome, store)
    log_path = _log_path(outcome)
    for what, read, want, unwanted in (
        ("the build log", lambda: read_log(log_path), expect.log, expect.log_not),
        ("stdout", lambda: _stream(log_path, "stdout"), expect.stdout, expect.stdout_not),
        ("stderr", lambda: _stream(log_path, "stderr"), expect.stderr, expect.stderr_not),
    ):
        if not want and not unwanted:
            continue
        text = read()
        for pattern in want:
            if not pattern.search(text):
                problems.append(Problem(f"{what} does not match {pattern.pattern!r}"))
        for pattern in unwanted:
            found = pattern.search(text)
            if found:
                problems.append(Problem(
                    f"{what} matches {pattern.pattern!r} (found {found.group(0)!r:.60})"))
    return problems


def _check_failure(case: Case, err: OcibuildError) -> list[Problem]:
    want = case.expect.failure
    if want is None:
        return [Problem(f"the build failed ({err.reason}): {err.message}")]
    problems = []
    if err.reason != want.reason:
        problems.append(Problem(
            f"the build failed with {err.reason}, expected {want.reason}: {err.message}"))
    exit_code = getattr(err, "exit_code", None)
    if want.exit_code is not None and exit_code != want.exit_code:
        problems.append(Problem(f"exit code {exit_code}, expected {want.exit_code}"))
    if want.message is not None and not want.message.search(err.message):
        problems.append(Problem(
            f"failure message {err.message!r} does not match {want.message.pattern!r}"))
    return problems


def _check_outputs(case: Case, build: Build, store: Store) -> list[Problem]:
    expect = case.expect
    problems = []
    for output, expected in expect.outputs.items():
        diff = diff_trees(expected, actual_tree(store, build.output(output)))
        if diff:
            problems.append(Problem(
                f"output {output} differs from the expected tree",
                f"output {output} (- expected, + actual)", diff))
    for output, refs in expect.references.items():
        found = sorted(build.references(output))
        if found != sorted(refs):
            problems.append(Problem(
                f"output {output} references {found}, expected {sorted(refs)}"))
    for output, digest in expect.root_digests.items():
        node = build.output(output)
        actual = "(a symlink)" if isinstance(node, SymlinkNode) else node.digest.hex
        if actual != digest:
            problems.append(Problem(f"output {output} has root digest {actual}, "
                                    f"expected {digest}"))
    return problems


def _log_path(outcome: Build | OcibuildError) -> Path | None:
    path = getattr(outcome, "log_path", None)
    return Path(path) if path else None


def _stream(log: Path | None, name: str) -> str:
    """What the build that wrote ``log`` wrote to ``name`` (stdout or stderr) alone."""
    try:
        return read_stream(log, name).decode(errors="replace")
    except OSError:
        return ""


def read_log(path: Path | None) -> str:
    """The whole build log as text ("" if there is none)."""
    if path is None:
        return ""
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path | None, lines: int = LOG_TAIL) -> list[str]:
    """The last ``lines`` lines of a build log (read from its end only)."""
    from pytest_ocibuild.build.executor import log_tail as tail

    return tail(path, lines).splitlines() if path is not None else []
