"""Activation, options and collection, through pytester (no builds run here)."""

from __future__ import annotations

import pytest

from pytest_ocibuild.plugin.hooks import glob_regex
from tests.plugin.conftest import write_cases

TWO_CASES = """\
first:
  command: [/inputs/busybox, "true"]
second:
  marks: [slow]
  command: [/inputs/busybox, "true"]
"""


def test_help_lists_the_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "*sandboxed OCI builds (pytest-ocibuild)*",
        "*--ocibuild-store=STORE*",
        "*--ocibuild-runtime=RUNTIME*",
        "*--ocibuild-timeout=TIMEOUT*",
        "*--ocibuild-keep-bundles*",
        "*--ocibuild-inputs=INPUTS*",
        "*ocibuild_store (string)*",
        "*ocibuild_cases (string)*",
    ])


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.ocibuild(timeout=3)
        def test_x():
            pass
    """)
    result = pytester.runpytest("--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1)
    pytester.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.ocibuild(timeout=None*"])


def test_cases_are_collected_in_file_order(pytester: pytest.Pytester) -> None:
    write_cases(pytester, TWO_CASES)
    write_cases(pytester, TWO_CASES, "elsewhere/ignored.yaml")
    result = pytester.runpytest("--collect-only", "-q", "-m", "slow")
    result.stdout.fnmatch_lines(["cases/demo.yaml::second", "*1/2 tests collected (1 deselected)*"])
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["cases/demo.yaml::first", "cases/demo.yaml::second"])
    assert "ignored" not in result.stdout.str()


def test_case_glob_from_ini_and_command_line(pytester: pytest.Pytester) -> None:
    write_cases(pytester, TWO_CASES, "builds/deep/x.yml")
    pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        ocibuild_cases = "builds/**/*.yml"
    """)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["builds/deep/x.yml::first", "*2 tests collected*"])
    result = pytester.runpytest("--collect-only", "-q", "--ocibuild-cases", "nothing/*.yaml")
    result.stdout.fnmatch_lines(["*no tests collected*"])


def test_bad_settings_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--ocibuild-timeout", "soon")
    result.stderr.fnmatch_lines(["*ocibuild_timeout: 'soon' is not a number of seconds*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    pytester.makeini("[pytest]\nocibuild_inputs = nfs\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*ocibuild_inputs: 'nfs' is not an input provider*"])


def test_settings_precedence(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        ocibuild_timeout = 5
        ocibuild_keep_bundles = true
        ocibuild_store = rel/store
    """)
    pytester.makepyfile("""
        from pytest_ocibuild.plugin.settings import SETTINGS_KEY

        def test_settings(pytestconfig):
            s = pytestconfig.stash[SETTINGS_KEY]
            assert (s.timeout, s.keep_bundles, s.inputs) == (7.0, True, "fuse")
            assert s.store == str(pytestconfig.rootpath / "rel/store")
    """)
    result = pytester.runpytest("--ocibuild-timeout=7", "--ocibuild-inputs=fuse")
    result.assert_outcomes(passed=1)


def test_a_bad_case_is_one_failing_item(pytester: pytest.Pytester) -> None:
    write_cases(pytester, TWO_CASES.replace("second:", "broken:\n  comand: [x]\nsecond:"))
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::first", "*::broken", "*::second", "*3 tests collected*"])
    result = pytester.runpytest("-k", "broken")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "invalid case: */cases/demo.yaml:4: case 'broken': unknown key(s) comand (expected: *",
        "FAILED cases/demo.yaml::broken - invalid case: *",
    ])
    assert "Traceback" not in result.stdout.str() and "runtest" not in result.stdout.str()


def test_a_malformed_file_is_one_failing_item(pytester: pytest.Pytester) -> None:
    write_cases(pytester, "first:\n  command: [x\n")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*demo.yaml:3: malformed YAML*", "*::invalid-file*"])
    assert "INTERNALERROR" not in result.stdout.str()


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("cases/**/*.yaml", "cases/a.yaml", True),
        ("cases/**/*.yaml", "cases/x/y/a.yaml", True),
        ("cases/**/*.yaml", "other/cases/a.yaml", False),
        ("cases/*.yaml", "cases/x/a.yaml", False),
        ("**/build-?.yml", "deep/down/build-1.yml", True),
    ],
)
def test_glob_regex(glob: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(glob).fullmatch(path)) is matches


def test_unregistered_case_mark_under_strict_markers(pytester: pytest.Pytester) -> None:
    write_cases(pytester, TWO_CASES)
    result = pytester.runpytest("--strict-markers", "-k", "second")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["invalid case: *demo.yaml:3: case 'second': *'slow' not found*"])
