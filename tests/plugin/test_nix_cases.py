"""Nix cases and the ``nix_build`` fixture, through pytester.

Tests that build need nix-build (CI installs it) and runc; they skip only when those are
missing. Collection, bad cases and the difference renderer need neither.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pytest_ocibuild.plugin.nixdiff import OutputInfo, Result, Side, compare, nix_side, nix_unusable
from tests.plugin.conftest import write_cases

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "nix" / "default.nix"

needs_nix_build = pytest.mark.skipif(  # a normal user's Debian nix-bin cannot build
    shutil.which("nix-build") is None or nix_unusable() is not None,
    reason=nix_unusable() or "needs nix-build on PATH")

# Writes a random UUID: two builds (ours, then nix-build's) never agree.
CLOCK_NIX = """\
{ bbdir }:
derivation {
  name = "clock";
  system = "x86_64-linux";
  builder = "${builtins.path { path = bbdir; name = "busybox-dir"; }}/busybox";
  args = [ "sh" "-e" "-c" ''
    mkdir $out; echo same > $out/same; cat /proc/sys/kernel/random/uuid > $out/now
  '' ];
}
"""


def nix_cases(pytester: pytest.Pytester, body: str) -> Path:
    """cases/demo.yaml with ``$CORPUS`` replaced by the repository's nix/default.nix."""
    return write_cases(pytester, body.replace("$CORPUS", str(CORPUS)))


# --- no Nix needed ---------------------------------------------------------------------------

def test_a_nix_case_is_collected(pytester: pytest.Pytester) -> None:
    nix_cases(pytester, """\
empties:
  nix: {file: $CORPUS, attr: trees.empties, bbdir: auto}
  compare: nix
raw:
  command: [/inputs/busybox, "true"]
""")
    result = pytester.runpytest("--collect-only", "-q", "-m", "ocibuild")
    result.stdout.fnmatch_lines(["cases/demo.yaml::empties", "cases/demo.yaml::raw",
                                 "*2 tests collected*"])


def test_bad_nix_cases_fail_with_file_and_line(pytester: pytest.Pytester) -> None:
    nix_cases(pytester, """\
typo:
  nix: {file: $CORPUS, atr: trees.empties}
missing-file:
  nix:
    file: nowhere.nix
    attr: x
bad-compare:
  nix: {file: $CORPUS, attr: trees.empties}
  compare: docker
mixed:
  nix: {file: $CORPUS, attr: trees.empties}
  command: [/inputs/busybox, "true"]
""")
    result = pytester.runpytest("-rf")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random([
        "invalid case: */cases/demo.yaml:2: case 'typo': nix: unknown key(s) atr (expected: "
        "args, argstrs, attr, bbdir, file)",
        "invalid case: */cases/demo.yaml:5: case 'missing-file': 'nowhere.nix': "
        "*/cases/nowhere.nix does not exist",
        "invalid case: */cases/demo.yaml:9: case 'bad-compare': compare: 'docker' is not one "
        "of ?'nix'?",
        "invalid case: */cases/demo.yaml:12: case 'mixed': unknown key(s) command *",
    ])
    assert "Traceback" not in result.stdout.str()


def _side(tmp: Path, name: str, text: str, nar_hash: str, refs: list[str]) -> Side:
    tree = tmp / name
    tree.mkdir()
    (tree / "greeting").write_text(text)
    (tree / "tool").write_text("#!/bin/sh\n")
    path = "/nix/store/" + "a" * 32 + "-hello"
    return Side(outputs={"out": OutputInfo(path, nar_hash, 120, refs)}, trees={"out": tree},
                drv_path="/nix/store/" + "d" * 32 + "-hello.drv")


def test_difference_renderer(tmp_path: Path) -> None:
    dep = "/nix/store/" + "c" * 32 + "-dep-c"
    ours = _side(tmp_path, "ours", "hello world\n", "sha256-AAAA", [dep])
    (ours.trees["out"] / "tool").chmod(0o755)
    nix = _side(tmp_path, "nix", "hello there\n", "sha256-BBBB", [])
    lines = compare(ours, nix)
    assert lines[:4] == [
        "output out:",
        "  narHash:     ours sha256-AAAA",
        "               nix  sha256-BBBB",
        "  references:  only in ours ['dep-c'], only in nix []",
    ]
    text = "\n".join(lines)
    assert "./greeting: contents differ (12 bytes in ours, 12 in nix)" in text
    assert "-hello there" in text and "+hello world" in text
    assert "./tool: executable in ours, file in nix" in text
    assert compare(ours, ours) == []


def test_success_against_failure_is_a_difference() -> None:
    failed = nix_side(Result(1, "", "error: builder for '/nix/store/x.drv' failed with "
                                    "exit code 3\n"))
    assert failed.error == "builder for '/nix/store/x.drv' failed with exit code 3"
    assert compare(Side(), failed) == [
        "ours built it, nix-build failed: builder for '/nix/store/x.drv' failed with exit code 3"]
    assert compare(Side(error="builder for '/nix/store/x.drv' failed with exit code 3"),
                   failed, nix_stderr="error: builder for '/nix/store/x.drv' failed with "
                                      "exit code 3\n") == []
    assert compare(Side(error="boom"), Side())[0] == "ours failed, nix-build built it: boom"


# --- building --------------------------------------------------------------------------------

@pytest.mark.usefixtures("needs_runc")
@pytest.mark.nix
@needs_nix_build
def test_passing_nix_cases(pytester: pytest.Pytester) -> None:
    nix_cases(pytester, """\
x-corpus: &corpus {file: $CORPUS, bbdir: auto}
multi:
  nix: {<<: *corpus, attr: deps.multi}
  compare: nix
  expect:
    outputs: {lib: {.: "lib\\n"}}
    references: {dev: [dep-multi, dep-multi-lib]}
exit3:
  nix: {<<: *corpus, attr: failures.exit3}
  compare: nix
  expect:
    failure: {reason: exit-code, exit_code: 3, message: "failed with exit code 3$"}
wrong-expectation:
  nix: {<<: *corpus, attr: trees.exec-file}
  expect:
    outputs: {out: {.: "not this\\n"}}
""")
    result = pytester.runpytest("-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*case 'wrong-expectation' (demo.yaml:13): output out differs from the expected tree",
    ])


@pytest.mark.usefixtures("needs_runc")
@pytest.mark.nix
@needs_nix_build
def test_a_difference_is_reported(pytester: pytest.Pytester) -> None:
    (pytester.path / "cases").mkdir()
    (pytester.path / "cases" / "clock.nix").write_text(CLOCK_NIX)
    write_cases(pytester, """\
clock:
  nix: {file: clock.nix, bbdir: auto}
  compare: nix
unchecked:
  nix: {file: clock.nix, bbdir: auto}
""")
    result = pytester.runpytest("-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "case 'clock' (demo.yaml:1): ours and nix-build disagree",
        "",
        "-------- ours vs nix-build: cases/clock.nix --------",
        "output out:",
        "  narHash:     ours sha256-*",
        "               nix  sha256-*",
        "  files (- nix, + ours):",
        "    ./now: contents differ (37 bytes in ours, 37 in nix)",
        "        --- nix/./now",
        "        +++ ours/./now",
    ])
    assert "./same" not in result.stdout.str()
    # the command-line switch compares every Nix case
    result = pytester.runpytest("--ocibuild-compare-nix", "-k", "unchecked")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["case 'unchecked' (demo.yaml:4): ours and nix-build disagree"])


@pytest.mark.usefixtures("needs_runc")
@pytest.mark.nix
@needs_nix_build
def test_a_rerun_reuses_evaluations_builds_and_agreeing_comparisons(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real nix-build behind a shim that counts its calls; a disagreement runs it again."""
    calls = tmp_path / "nix-build.calls"
    shim = tmp_path / "shim"
    shim.mkdir()
    real = shutil.which("nix-build")
    (shim / "nix-build").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    (shim / "nix-build").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    (pytester.path / "cases").mkdir()
    (pytester.path / "cases" / "clock.nix").write_text(CLOCK_NIX)
    nix_cases(pytester, """\
x-corpus: &corpus {file: $CORPUS, bbdir: auto}
multi:
  nix: {<<: *corpus, attr: deps.multi}
  compare: nix
exit3:
  nix: {<<: *corpus, attr: failures.exit3}
  compare: nix
  expect: {failure: {reason: exit-code, exit_code: 3}}
clock:
  nix: {file: clock.nix, bbdir: auto}
  compare: nix
""")

    def run(*args: str) -> list[str]:
        before = calls.read_text().splitlines() if calls.exists() else []
        result = pytester.runpytest("-rf", *args)
        result.assert_outcomes(passed=2, failed=1)
        result.stdout.fnmatch_lines(["*case 'clock' (demo.yaml:*): ours and nix-build disagree"])
        return calls.read_text().splitlines()[len(before):]

    assert len(run()) == 3
    again = run()
    assert len(again) == 1 and "clock.nix" in again[0]  # only the disagreement
    assert len(run("--ocibuild-no-cache")) == 3


@pytest.mark.usefixtures("needs_runc")
@pytest.mark.nix
@needs_nix_build
def test_nix_build_fixture(pytester: pytest.Pytester) -> None:
    (pytester.path / "clock.nix").write_text(CLOCK_NIX)
    pytester.makepyfile(f"""
        import subprocess

        import pytest

        from pytest_ocibuild.errors import BuildFailed

        CORPUS = {str(CORPUS)!r}


        def test_build_and_compare(nix_build):
            result = nix_build.build(CORPUS, "trees.empties", args={{"bbdir": nix_build.bbdir}})
            assert result.tree("out") == {{
                "a/b/c": {{"dir": True}}, "a/b/zero": "", "a/file": "notempty\\n",
                "empty": {{"dir": True}}, "empty-file": "", "x/empty-too": {{"dir": True}},
            }}
            assert result.read("out", "a/file") == b"notempty\\n"
            assert result.path("out").endswith("-empties")
            assert result.references("out") == ()
            nix_build.assert_same_as_nix(CORPUS, "deps.multi", args={{"bbdir": nix_build.bbdir}})


        def test_a_drv(nix_build):
            drv = subprocess.run(
                ["nix-instantiate", CORPUS, "-A", "deps.a", "--arg", "bbdir",
                 str(nix_build.bbdir)], capture_output=True, text=True, check=True,
                 env={{"NIX_REMOTE": "", "PATH": "/usr/bin:/bin"}}).stdout.strip()
            result = nix_build.build(drv)
            assert [r.split("-", 1)[1] for r in result.references()] == ["dep-b"]
            assert nix_build.compare(drv).agree


        def test_failure(nix_build):
            with pytest.raises(BuildFailed, match="failed with exit code 3"):
                nix_build.build(CORPUS, "failures.exit3", args={{"bbdir": nix_build.bbdir}})


        def test_disagreement(nix_build):
            comparison = nix_build.compare("clock.nix", args={{"bbdir": nix_build.bbdir}})
            assert not comparison.agree
            assert "./now: contents differ" in comparison.report()
    """)
    result = pytester.runpytest("-rf")
    result.assert_outcomes(passed=4)
