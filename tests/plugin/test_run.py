"""Running cases through pytester: goldens, failure reports, durations, xdist."""

from __future__ import annotations

import json

import pytest

from tests.plugin.conftest import write_cases

pytestmark = pytest.mark.usefixtures("needs_runc")

HELLO = """\
x-bb: &bb
  busybox: {path: $BUSYBOX}
hello:
  inputs: *bb
  env: {WHO: world}
  command: [/inputs/busybox, sh, -euc, 'mkdir out; echo "hello $WHO" > out/greeting']
  outputs: [build/out]
  expect:
    outputs:
      build/out:
        greeting: "hello world\\n"
"""
GOLDEN = "cases/__snapshots__/demo/hello.json"


def test_snapshot_update_writes_a_deterministic_golden(pytester: pytest.Pytester) -> None:
    write_cases(pytester, HELLO)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no golden config.json at *demo/hello.json "
                                 "(write it: --snapshot-update)*"])
    result = pytester.runpytest("--snapshot-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot generated*"])
    golden = (pytester.path / GOLDEN).read_text()
    spec = json.loads(golden)
    assert spec["process"]["env"] == ["WHO=world"]
    # Goldens carry no host specifics: canonical id maps, bundle-relative paths only.
    assert spec["linux"]["uidMappings"][0] == {"containerID": 0, "hostID": 1000, "size": 1}
    assert str(pytester.path) not in golden and "/tmp/" not in golden
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot passed*"])
    assert (pytester.path / GOLDEN).read_text() == golden


def test_spec_drift_shows_the_spec_diff(pytester: pytest.Pytester) -> None:
    path = write_cases(pytester, HELLO)
    pytester.runpytest("--snapshot-update").assert_outcomes(passed=1)
    path.write_text(path.read_text().replace("WHO: world", "WHO: world, OTHER: x"))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "case 'hello' (demo.yaml:3): config.json differs from its golden "
        "(accept with --snapshot-update)",
        "*-------- config.json: - golden */demo/hello.json, + generated --------",
        '*"OTHER=x",*',
    ])
    pytester.runpytest("--snapshot-update").assert_outcomes(passed=1)
    assert "OTHER=x" in (pytester.path / GOLDEN).read_text()


def test_deselected_goldens_survive_an_update_and_orphans_go(pytester: pytest.Pytester) -> None:
    write_cases(pytester, HELLO + HELLO.split("\n", 2)[2].replace("hello:", "second:"))
    pytester.runpytest("--snapshot-update").assert_outcomes(passed=2)
    pytester.runpytest("--snapshot-update", "-k", "second").assert_outcomes(passed=1)
    assert (pytester.path / GOLDEN).exists()
    orphan = pytester.path / "cases/__snapshots__/demo/removed.json"
    orphan.write_text("{}\n")
    result = pytester.runpytest("cases")
    result.stdout.fnmatch_lines(["*1 snapshot unused*"])
    assert result.ret != 0
    pytester.runpytest("cases", "--snapshot-update").stdout.fnmatch_lines(["*Deleted removed*"])
    assert not orphan.exists() and (pytester.path / GOLDEN).exists()


def test_tree_mismatch_report(pytester: pytest.Pytester) -> None:
    text = HELLO.replace('greeting: "hello world\\n"',
                         'greeting: "hello there\\n"\n        missing: {dir: true}')
    text = text.replace("mkdir out;", "mkdir out; echo built it >&2;")
    write_cases(pytester, text)
    result = pytester.runpytest("--snapshot-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "case 'hello' (demo.yaml:3): output build/out differs from the expected tree",
        "-------- output build/out (- expected, + actual) --------",
        "- greeting * file 12 B 'hello there\\n'",
        "+ greeting * file 12 B 'hello world\\n'   <- contents differ",
        "- missing * dir",
        "+ missing * (missing)",
        "-------- build log: last 1 lines of *demo--hello.log --------",
        "built it",
    ])
    assert "Traceback" not in result.stdout.str()


def test_unexpected_failure_and_expected_failure(pytester: pytest.Pytester) -> None:
    write_cases(pytester, """\
x-bb: &bb
  busybox: {path: $BUSYBOX}
breaks:
  inputs: *bb
  command: [/inputs/busybox, sh, -c, "echo step one; echo it broke >&2; exit 4"]
meant-to-break:
  inputs: *bb
  command: [/inputs/busybox, sh, -c, "echo it broke >&2; exit 4"]
  expect:
    failure: {reason: exit-code, exit_code: 4, message: "code 4"}
    log: ["^it broke$"]
wrong-expectation:
  inputs: *bb
  command: [/inputs/busybox, "true"]
  expect:
    failure: {reason: timeout}
""")
    result = pytester.runpytest("--snapshot-update", "-rf")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "case 'breaks' (demo.yaml:3): the build failed (exit-code): "
        "builder failed with exit code 4",
        "-------- build log: last 2 lines of *demo--breaks.log --------",
    ])
    assert {"step one", "it broke"} <= set(result.stdout.lines)  # stdout and stderr
    result.stdout.fnmatch_lines([
        "*'wrong-expectation'*: the build succeeded, but a failure (timeout) was expected*"])


def test_from_case_failure_names_the_dependency(pytester: pytest.Pytester) -> None:
    write_cases(pytester, """\
base:
  command: [/nonexistent]
  outputs: [build/o]
user:
  inputs:
    dep: {from_case: base}
  command: [/inputs/dep]
""")
    result = pytester.runpytest("--snapshot-update", "-k", "user")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["case 'user' (demo.yaml:4): *input 'dep': case 'base' failed: "
                                 "builder failed with exit code 127"])


def test_durations_and_progress(pytester: pytest.Pytester) -> None:
    write_cases(pytester, HELLO.replace("mkdir out;", "sleep 1.5; mkdir out;"))
    result = pytester.runpytest("--snapshot-update", "--durations=3", "--ocibuild-progress=0.5",
                                "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "?ocibuild? demo.yaml::hello: building for *s; log: *demo--hello.log",
        "*slowest 3 durations*",
        "*s call     cases/demo.yaml::hello",
    ])


def test_xdist_shares_one_store(pytester: pytest.Pytester) -> None:
    cases = HELLO + "".join(
        HELLO.split("\n", 2)[2].replace("hello:", f"copy-{i}:") for i in range(5))
    write_cases(pytester, cases)
    pytester.makepyfile(test_store="""
        def test_store_location(castore, pytestconfig, worker_id):
            with open("store-of-" + worker_id, "w") as f:
                f.write(str(castore.root))
    """)
    result = pytester.runpytest_subprocess("-n", "2", "--snapshot-update", "-p", "xdist")
    result.assert_outcomes(passed=7)
    stores = {p.read_text() for p in pytester.path.glob("store-of-*")}
    assert len(stores) == 1, stores
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["*6 snapshots passed*"])
