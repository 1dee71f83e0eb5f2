"""Hostile input files: fuzzed requests, case files and .drv files give one clean error line.

Mutations of real files (byte flips, truncation, splices, deep nesting, huge scalars, alias
bombs, non-UTF-8 bytes, long path components) go through the real entry points: ``ocibuild
spec``/``nix-build`` in-process, ``ocibuild build`` and pytest in subprocesses. Each must end
with exit code 2 and exactly one ``ocibuild: error: FILE...`` line (or succeed, if the
mutation left the file valid), never a traceback; a bad case file is one failing item.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml  # one PyYAML for in-process pytester runs (see tests/plugin/conftest)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ocibuild import cli
from pytest_ocibuild.build.yaml_load import LIMITS
from pytest_ocibuild.plugin.collect import InvalidCaseItem

ROOT = Path(__file__).parents[2]
HELLO = (ROOT / "examples" / "hello.yaml").read_bytes()
DRV = ROOT / "tests" / "nix" / "fixtures" / "mf31a20a9lpb5pcsbnk8f8lyvwvw6a7r-structured.drv"
CASE = b"""\
x-busybox: &busybox
  busybox: {path: /bin/busybox}
ok:
  description: a case that is never run here
  inputs: *busybox
  command: [/inputs/busybox, "true"]
  scratch_paths: [build]
  outputs: [build/out]
  env: {A: b}
"""
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def alias_bomb(levels: int = 9, width: int = 9) -> bytes:
    """Billion laughs under an ``x-`` key: ``width ** levels`` nodes once expanded."""
    lines = [f"x-l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


def nested(depth: int, flow: bool) -> bytes:
    """``depth`` nested sequences; block style at most 2000 deep (its indentation grows with
    depth: 100,000 levels would be a 10 GB document), far past the loader's bound of 64."""
    if flow:
        return b"[" * depth + b"]" * depth
    depth = min(depth, 2000)
    return b"".join(b"  " * i + b"- \n" for i in range(depth)) + b"  " * depth + b"- x"


def _flips(base: bytes) -> st.SearchStrategy[bytes]:
    def apply(edits: list[tuple[int, int]]) -> bytes:
        b = bytearray(base)
        for at, value in edits:
            b[at % len(b)] = value
        return bytes(b)
    return st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                    min_size=1, max_size=8).map(apply)


def _insert(base: bytes, what: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(0, len(base)), what).map(
        lambda t: base[:t[0]] + t[1] + base[t[0]:])


NON_UTF8 = st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xfe\xff", b"\xe2\x82"])


def mutations(base: bytes, fields: Callable[[int], st.SearchStrategy[bytes]]) \
        -> st.SearchStrategy[bytes]:
    """Bytes derived from ``base``; ``fields(n)`` gives a top-level YAML entry of size ~n."""
    return st.one_of(
        _flips(base),
        st.integers(0, len(base) - 1).map(lambda n: base[:n]),
        st.tuples(st.integers(0, len(base)), st.integers(0, len(base)), st.integers(1, 60))
        .map(lambda t: base[:t[0]] + base[t[1]:t[1] + t[2]] + base[t[0]:]),
        _insert(base, NON_UTF8),
        st.binary(max_size=300),
        st.tuples(st.sampled_from([40, 63, 65, 200, 999, 5000, 100_000]), st.booleans())
        .map(lambda t: base + b"\nx-deep: " + nested(*t) + b"\n"),
        st.integers(2, 9).map(lambda n: alias_bomb(n, n) + base),
        st.sampled_from([10**4, 10**6, LIMITS.max_bytes + 1]).flatmap(fields),
        st.just(b"x-self: &s [*s]\n" + base),
        st.just(b"x-big: " + b"9" * 5000 + b"\n" + base),
    )


def _request_fields(n: int) -> st.SearchStrategy[bytes]:
    """Request entries with a huge scalar or a long path component."""
    s = b"a" * n
    return st.sampled_from([
        HELLO.replace(b"scratch_paths: [build]", b"scratch_paths: [build, s/" + s[:300] + b"]"),
        HELLO.replace(b"working_dir: build", b"working_dir: build/" + b"/".join([b"d" * 200] * 30)),
        HELLO.replace(b"outputs: [build/out]", b"outputs: [build/" + s[:256] + b"]"),
        HELLO.replace(b"inputs_dir: inputs", b"inputs_dir: " + s[:4096]),
        HELLO + b"refscan_needles: [" + s + b"]\n",
        HELLO.replace(b"GREETING: hello", b"GREETING: " + s),
        HELLO + b"additional_files: {" + s[:300] + b": x}\n",
    ])


def _run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:  # argparse
            rc = int(e.code or 0)
    return rc, err.getvalue()


def assert_clean(rc: int, stderr: str, source: Path, *, quiet_success: bool = True) -> None:
    """Exit 2 with one ``ocibuild: error: SOURCE...`` line, or success."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    if rc == 0:
        assert not quiet_success or lines == [], stderr
        return
    assert rc == 2, stderr
    assert len(lines) == 1 and lines[0].startswith(f"ocibuild: error: {source}"), stderr


@pytest.fixture(autouse=True)
def _private_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pytest runs started here use their own store (collection alone never builds)."""
    monkeypatch.setenv("OCIBUILD_STORE", str(tmp_path / "ocibuild-store"))
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _spec_is_clean(path: Path, data: bytes) -> None:
    """``ocibuild spec`` of ``data`` written to ``path``: valid, or one clean error line."""
    path.write_bytes(data)
    rc, stderr = _run_cli("spec", str(path), "--store", str(path.parent / "store"))
    assert_clean(rc, stderr, path)


@FUZZ
@given(data=mutations(HELLO, _request_fields))
def test_fuzzed_request_through_spec_is_one_line_or_valid(work: Path, data: bytes) -> None:
    _spec_is_clean(work / "request.yaml", data)


HELLO_JSON = json.dumps(yaml.safe_load(HELLO), indent=1).encode()


def _json_fields(n: int) -> st.SearchStrategy[bytes]:
    return st.sampled_from([
        HELLO_JSON.replace(b'"build"', b'"' + b"b" * min(n, 5000) + b'"', 1),
        HELLO_JSON.replace(b'"outputs": [', b'"outputs": [' + b"[" * n + b"]" * n + b",", 1),
        HELLO_JSON.replace(b'"inputs": {', b'"x": ' + b"9" * min(n, 6000) + b', "inputs": {', 1),
    ])


@settings(FUZZ, max_examples=25)
@given(data=mutations(HELLO_JSON, _json_fields))
def test_fuzzed_json_request_through_spec(work: Path, data: bytes) -> None:
    _spec_is_clean(work / "request.json", data)


@pytest.mark.parametrize("text", [
    b"command_args: [x]\nworking_dir: " + b"a" * 255,
    b"command_args: [x]\nworking_dir: " + b"/".join([b"a" * 255] * 4),
])
def test_long_but_legal_paths_are_accepted(work: Path, text: bytes) -> None:
    path = work / "legal.yaml"
    path.write_bytes(text)
    assert _run_cli("spec", str(path), "--store", str(work / "store")) == (0, "")


HOSTILE_REQUESTS = {
    "non-utf8": HELLO.replace(b"hello from", b"hel\xfflo from"),
    "alias-bomb": alias_bomb() + HELLO,
    "deep-flow": HELLO + b"x: " + nested(3000, True) + b"\n",
    "deep-block": HELLO + b"x:\n" + nested(100, False) + b"\n",
    "long-component": HELLO.replace(b"scratch_paths: [build]",
                                    b"scratch_paths: [build, " + b"s" * 300 + b"]"),
    "long-path": HELLO.replace(b"working_dir: build", b"working_dir: build/" + b"/".join(
        [b"d" * 250] * 20)),
    "truncated": HELLO[:HELLO.index(b"busybox}")],
    "huge-int": HELLO + b"constraints: {min_memory: " + b"9" * 5000 + b"}\n",
    "garbage": bytes(range(256)),
}


def test_hostile_requests_through_build_subprocess(tmp_path: Path) -> None:
    """The real ``ocibuild build`` console entry: exit 2, one line naming the file."""
    procs = {}
    for name, data in HOSTILE_REQUESTS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(data)
        procs[name] = (path, subprocess.Popen(
            [sys.executable, "-m", "pytest_ocibuild", "build", str(path), "--store",
             str(tmp_path / "store")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    for name, (path, proc) in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and out == "", (name, err)
        assert_clean(proc.returncode, err, path)
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert_clean(*_run_cli("build", str(directory), "--store", str(tmp_path / "store")),
                 directory)


# -- case files through pytest ------------------------------------------------------------


def _case_fields(n: int) -> st.SearchStrategy[bytes]:
    s = b"a" * n
    return st.sampled_from([
        CASE.replace(b"[build]", b"[build, s/" + s[:300] + b"]"),
        CASE + b"  refscan_needles: [" + s + b"]\n",
        CASE.replace(b"A: b", b"A: " + s),
    ])


def _collect(pytester: pytest.Pytester, *args: str) -> tuple[list[pytest.Item], int]:
    items, reprec = pytester.inline_genitems("-p", "no:randomly", *args)
    assert not reprec.getfailedcollections(), reprec.getfailedcollections()
    return items, len(reprec.getcalls("pytest_internalerror"))


def _check_case_file(pytester: pytest.Pytester, data: bytes) -> None:
    """Collection never errors; each invalid item fails alone, naming file:line."""
    path = pytester.path / "cases" / "fuzz.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    items, internal = _collect(pytester)
    assert internal == 0
    bad = [i for i in items if isinstance(i, InvalidCaseItem)]
    assert all(i.message.startswith(f"{path}:") and i.message.split(":")[1].isdigit()
               for i in bad), [i.message for i in bad]
    if bad:
        result = pytester.runpytest("-p", "no:randomly", *(i.nodeid for i in bad))
        result.assert_outcomes(failed=len(bad))
        assert "INTERNALERROR" not in result.stdout.str()


@settings(FUZZ, max_examples=8)
@given(data=mutations(CASE, _case_fields))
def test_fuzzed_case_file_is_failing_items_not_a_crash(pytester: pytest.Pytester,
                                                       data: bytes) -> None:
    _check_case_file(pytester, data)


@pytest.mark.parametrize("data", [
    alias_bomb() + CASE, b"ok:\n  command: [\xff]\n", CASE + b"x-deep: " + nested(3000, True),
], ids=["alias-bomb", "non-utf8", "deep"])
def test_bad_case_file_is_one_failing_item(pytester: pytest.Pytester, data: bytes) -> None:
    path = pytester.path / "cases" / "bad.yaml"
    path.parent.mkdir()
    path.write_bytes(data)
    (pytester.path / "cases" / "good.yaml").write_bytes(CASE)
    start = time.monotonic()
    result = pytester.runpytest("-p", "no:randomly", "cases/bad.yaml")
    elapsed = time.monotonic() - start
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([rf"invalid case: {path}:\d+: malformed YAML: .+"])
    assert elapsed < 2, f"{elapsed:.1f}s"
    items, _ = _collect(pytester, "--collect-only")
    assert [i.name for i in items] == ["invalid-file", "ok"]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_alias_bomb_under_xdist_is_one_item(pytester: pytest.Pytester, workers: str) -> None:
    cases = pytester.path / "cases"
    cases.mkdir()
    (cases / "bomb.yaml").write_bytes(alias_bomb() + CASE)
    (cases / "deep.yaml").write_bytes(b"ok:\n  command: " + nested(70, True) + b"\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", workers, "cases")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "MemoryError" not in out, out
    result.stdout.re_match_lines([r".*bomb\.yaml:\d+: malformed YAML: aliases expand to more "
                                  r"than \d+ nodes"])


# -- .drv files through ocibuild nix-build --------------------------------------------------

DRV_HASHES = iter(f"{i:0>4}" + "0" * 28 for i in range(1_000_000))  # valid nixbase32


@pytest.mark.skipif(os.geteuid() != 0 and not os.access("/nix/store", os.W_OK),
                    reason="writes .drv files into /nix/store (root's, read-only to users)")
@settings(FUZZ, max_examples=40)
@given(data=mutations(DRV.read_bytes(), lambda n: st.just(b"Derive([" * (n // 8))))
def test_fuzzed_drv_through_nix_build_is_one_line(work: Path, data: bytes) -> None:
    path = Path(f"/nix/store/{next(DRV_HASHES)[:32]}-ocibuild-fuzz.drv")
    path.write_bytes(data)
    try:
        rc, stderr = _run_cli("nix-build", str(path), "--dry-run", "--store", str(work / "store"))
    finally:
        path.unlink()
    assert "Traceback" not in stderr, stderr
    assert rc in (0, 2), stderr
    if rc == 2:
        [line] = stderr.splitlines()
        assert line.startswith("ocibuild: error: "), stderr
