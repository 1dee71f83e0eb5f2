"""The plugin as a pytest user meets it: one line for an unusable store (with and without
xdist), only case files collected, an empty ``ocibuild_cases`` turning collection off, and
pytest's cache (``--lf``, ``--ff``, ``--sw``) working on cases."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.cli.conftest import ROOT

CASES = """\
x-bb: &bb
  busybox: {path: /bin/busybox}
good:
  inputs: *bb
  command: [/inputs/busybox, sh, -c, "echo hi > out"]
  outputs: [build/out]
  expect:
    outputs:
      build/out: {.: "hi\\n"}
bad:
  inputs: *bb
  command: [/inputs/busybox, sh, -c, "echo hi > out"]
  outputs: [build/out]
  expect:
    outputs:
      build/out: {.: "bye\\n"}
"""
DATA = "name: alice\nroles: [admin]\npeople:\n  bob: {age: 3}\n"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> pytest.Pytester:
    """A project with the repository's addopts, a case file, a data file and a Python test
    using the ``castore`` fixture."""
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["addopts"]
    pytester.makepyprojecttoml(f'[tool.pytest.ini_options]\naddopts = "{addopts}"\n')
    (pytester.path / "cases").mkdir()
    (pytester.path / "cases" / "demo.yaml").write_text(CASES)
    (pytester.path / "cases" / "fixture-data.yaml").write_text(DATA)
    pytester.makepyfile(test_store="def test_store(castore):\n    assert castore\n")
    monkeypatch.setenv("OCIBUILD_STORE", str(tmp_path / "store"))
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def _assert_clean(result: pytest.RunResult) -> str:
    text = result.stdout.str() + "\n" + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return text


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("how", ["option", "env"])
def test_unusable_store_is_one_usage_error(project: pytest.Pytester, workers: str, how: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["-n", workers, "-p", "no:randomly"]
    if how == "option":
        args += ["--ocibuild-store", "/dev/null/store"]
    else:
        monkeypatch.setenv("OCIBUILD_STORE", "/dev/null/store")
    result = project.runpytest_subprocess(*args)
    text = _assert_clean(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    lines = [x for x in text.splitlines() if "/dev/null/store" in x]
    assert lines == ["ERROR: store /dev/null/store: cannot be created: /dev/null is not a "
                     "directory (set --ocibuild-store, ocibuild_store or $OCIBUILD_STORE to a "
                     "writable directory)"], text


def test_read_only_store_in_pytest(project: pytest.Pytester, read_only_dir: Path) -> None:
    result = project.runpytest_subprocess("-n", "0", f"--ocibuild-store={read_only_dir}")
    text = _assert_clean(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: store {read_only_dir}: " in text


def test_collect_only_needs_no_store(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--co", "-q", "--ocibuild-store", "/dev/null/store")
    _assert_clean(result)
    assert result.ret == 0


def test_only_case_files_are_collected(project: pytest.Pytester) -> None:
    result = project.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(["cases/demo.yaml::good", "cases/demo.yaml::bad",
                                 "test_store.py::test_store", "*3 tests collected*"])
    assert "fixture-data" not in result.stdout.str()


def test_a_data_file_named_on_the_command_line_is_collected(project: pytest.Pytester) -> None:
    result = project.runpytest("--co", "-q", "cases/fixture-data.yaml")
    result.stdout.fnmatch_lines(["cases/fixture-data.yaml::name", "*collected*"])


@pytest.mark.parametrize("setting", [("-o", "ocibuild_cases="), ("--ocibuild-cases=",)])
def test_an_empty_setting_turns_collection_off(project: pytest.Pytester,
                                               setting: tuple[str, ...]) -> None:
    result = project.runpytest("--co", "-q", *setting)
    result.stdout.fnmatch_lines(["test_store.py::test_store", "*1 test collected*"])
    assert "demo.yaml" not in result.stdout.str()


def test_several_directories_and_globs(project: pytest.Pytester) -> None:
    (project.path / "more" / "deep").mkdir(parents=True)
    (project.path / "more" / "deep" / "x.yml").write_text(CASES)
    (project.path / "builds").mkdir()
    (project.path / "builds" / "y.yaml").write_text(CASES)
    result = project.runpytest("--co", "-q", "-o", "ocibuild_cases=more builds/*.yaml")
    result.stdout.fnmatch_lines(["builds/y.yaml::good", "*more/deep/x.yml::good*"])
    assert "cases/demo.yaml" not in result.stdout.str()


def _outcomes(result: pytest.RunResult) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if k in ("passed", "failed",
                                                                     "deselected")}


@pytest.mark.runc
def test_last_failed_failed_first_and_stepwise_on_cases(project: pytest.Pytester) -> None:
    run = project.runpytest_subprocess
    assert run("-p", "no:randomly", "--snapshot-update", "cases").ret == 1
    first = run("-p", "no:randomly", "cases")
    assert _outcomes(first) == {"passed": 1, "failed": 1}, first.stdout.str()
    last = run("-p", "no:randomly", "--lf", "cases")
    assert _outcomes(last) == {"failed": 1}, last.stdout.str()
    assert "run-last-failure: rerun previous 1 failure" in last.stdout.str()
    ff = run("-p", "no:randomly", "--ff", "-v", "cases")
    order = [x.split()[0] for x in ff.stdout.lines if "::" in x and (" PASSED" in x or
                                                                      " FAILED" in x)]
    assert order[:2] == ["cases/demo.yaml::bad", "cases/demo.yaml::good"], ff.stdout.str()
    sw = run("-p", "no:randomly", "--sw", "cases")
    assert "stepwise" in sw.stdout.str().lower() and _outcomes(sw)["failed"] == 1


@pytest.mark.parametrize("value", ["0", "-5", "inf"])
def test_timeouts_are_more_than_zero_in_ini_too(pytester: pytest.Pytester, value: str) -> None:
    result = pytester.runpytest(f"--ocibuild-timeout={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ocibuild_timeout: must be more than 0 seconds, got *"
                                 "(leave it empty, or 'none', for no timeout)*"])


@pytest.mark.parametrize(("value", "expected"), [("none", None), ("", None), ("2.5", 2.5)])
def test_no_timeout_spelled_none_or_empty(pytester: pytest.Pytester, value: str,
                                          expected: float | None) -> None:
    pytester.makepyfile(f"""
        from pytest_ocibuild.plugin.settings import SETTINGS_KEY

        def test_settings(pytestconfig):
            assert pytestconfig.stash[SETTINGS_KEY].timeout == {expected!r}
    """)
    pytester.runpytest("-o", f"ocibuild_timeout={value}").assert_outcomes(passed=1)


@pytest.mark.runc
def test_kept_bundles_are_named_and_survive_the_next_run(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # a per-user dir of this test's own
    run_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run_dir))
    project.runpytest_subprocess("-p", "no:randomly", "--snapshot-update", "cases")
    result = project.runpytest_subprocess("-p", "no:randomly", "--ocibuild-keep-bundles",
                                          "--ocibuild-no-cache", "-k", "good", "cases")
    (line,) = [x for x in result.stdout.lines if x.startswith("ocibuild: bundles kept in ")]
    kept = Path(line.split()[4])
    assert kept.parent == run_dir / "ocibuild" / "kept"
    assert list(kept.rglob("config.json")), sorted(kept.rglob("*"))
    project.runpytest_subprocess("-p", "no:randomly", "--ocibuild-no-cache", "-k", "good",
                                 "cases")  # its start-up purge leaves the kept bundles alone
    assert list(kept.rglob("config.json"))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_missing_runtime_is_one_line_per_case(project: pytest.Pytester, workers: str) -> None:
    (project.path / "cases" / "__snapshots__").mkdir()
    result = project.runpytest_subprocess("-n", workers, "-p", "no:randomly", "cases",
                                          "--ocibuild-runtime=/nonexistent/runc",
                                          "--snapshot-update")
    text = _assert_clean(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*case 'good' (demo.yaml:3): OCI runtime '/nonexistent/runc' "
                                 "not found on PATH*"])
    assert "_pytest" not in text and "raise " not in text
