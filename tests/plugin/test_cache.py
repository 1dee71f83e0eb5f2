"""The result cache in pytest: a persistent store shared across runs and xdist workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugin.conftest import write_cases

pytestmark = pytest.mark.usefixtures("needs_runc")

CASES = """\
x-bb: &bb
  busybox: {path: $BUSYBOX}
slow:
  inputs: *bb
  command: [/inputs/busybox, sh, -euc, 'sleep 1; mkdir out; echo done > out/f']
  outputs: [build/out]
  expect:
    outputs: {build/out: {f: "done\\n"}}
fails:
  inputs: *bb
  command: [/inputs/busybox, sh, -c, "echo to-out; echo to-err >&2; exit 2"]
  expect:
    failure: {reason: exit-code, exit_code: 2}
    log: ["^to-out$", "^to-err$"]
    stdout: ["^to-out$"]
    stdout_not: ["to-err"]
    stderr: ["^to-err$"]
    stderr_not: ["to-out"]
"""


def _call_durations(result: pytest.RunResult) -> dict[str, float]:
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    return {r.nodeid.rpartition("::")[2]: r.duration for r in reports if r.when == "call"}


def test_a_second_run_is_all_hits(pytester: pytest.Pytester, tmp_path: Path) -> None:
    write_cases(pytester, CASES)
    store = f"--ocibuild-store={tmp_path / 'shared-store'}"
    cold = pytester.runpytest("--snapshot-update", store)
    cold.assert_outcomes(passed=2)
    cold.stdout.fnmatch_lines(["ocibuild: 2 builds, 0 cached (hits), 2 built (misses), *s saved"])
    assert _call_durations(cold)["slow"] >= 1.0
    warm = pytester.runpytest(store)
    warm.assert_outcomes(passed=2)  # the cached failure still meets its expectations
    warm.stdout.fnmatch_lines(["ocibuild: 2 builds, 2 cached (hits), 0 built (misses), *s saved"])
    saved = float(warm.stdout.str().split("(misses), ")[1].split("s saved")[0])
    assert saved >= 0.9
    assert _call_durations(warm)["slow"] < 0.5  # `sleep 1` did not run
    forced = pytester.runpytest(store, "--ocibuild-no-cache")
    forced.assert_outcomes(passed=2)
    forced.stdout.fnmatch_lines(
        ["ocibuild: 2 builds, 0 cached (hits), 2 built (misses), 0.0s saved"])
    assert _call_durations(forced)["slow"] >= 1.0


def test_no_cache_as_ini_key(pytester: pytest.Pytester, tmp_path: Path) -> None:
    write_cases(pytester, CASES.split("fails:")[0])
    pytester.makeini(f"[pytest]\nocibuild_store = {tmp_path / 's'}\nocibuild_no_cache = true\n")
    pytester.runpytest("--snapshot-update").assert_outcomes(passed=1)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["ocibuild: 1 builds, 0 cached (hits), 1 built (misses), *"])


def test_stream_patterns_report_which_stream(pytester: pytest.Pytester, tmp_path: Path) -> None:
    write_cases(pytester, CASES.split("slow:")[0] + "fails:" + CASES.split("fails:")[1].replace(
        'stdout: ["^to-out$"]', 'stdout: ["^to-err$"]'))
    result = pytester.runpytest("--snapshot-update", f"--ocibuild-store={tmp_path / 's'}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*: stdout does not match '^to-err$'"])


def test_xdist_workers_stats_are_merged(pytester: pytest.Pytester, tmp_path: Path) -> None:
    body = CASES.split("fails:")[0].split("slow:")[1].replace("sleep 1; ", "")
    write_cases(pytester, CASES.split("slow:")[0] + "".join(
        f"case-{i}:" + body.replace("echo done", f"echo {i}").replace('"done', f'"{i}')
        for i in range(4)))
    store = f"--ocibuild-store={tmp_path / 'store'}"
    cold = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", "--snapshot-update", store)
    cold.assert_outcomes(passed=4)
    cold.stdout.fnmatch_lines(["ocibuild: 4 builds, 0 cached (hits), 4 built (misses), *"])
    warm = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", store)
    warm.assert_outcomes(passed=4)
    warm.stdout.fnmatch_lines(["ocibuild: 4 builds, 4 cached (hits), 0 built (misses), *"])
