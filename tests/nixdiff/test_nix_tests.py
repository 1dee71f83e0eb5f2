"""``ocibuild nix-build`` against ``nix-build`` over Nix's own functional tests.

The corpus is fetched by ``tests/nixdiff/nixtests.py`` (Debian's nix source package, cached
under ``~/.cache/ocibuild/nix-tests``); if it cannot be had, ``test_corpus_available`` fails
with the reason. Each derivation is built both ways with the same options (those Nix's shell
scripts pass, plus ``--option sandbox true --option substituters ''``): both must fail, or both
build with the same drvPath and, per output, the same store path, NAR hash and size and
references.

    .venv/bin/pytest tests/nixdiff/test_nix_tests.py -n 2
    .venv/bin/pytest tests/nixdiff/test_nix_tests.py -k 'fixed.nix'
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.nixdiff.conftest import (
    NIX_BUILD_OPTS,
    OutputInfo,
    Result,
    _run,
    nix_errors,
    ocibuild_command,
    our_reason,
    run_nix_build,
    store_lock,
)
from tests.nixdiff.nixtests import (
    Case,
    CorpusUnavailable,
    cache_dir,
    discover,
    fetch,
    prepare,
)

ENV = {"NIX_REMOTE": "", "IMPURE_VAR1": "foo", "IMPURE_VAR2": "bar"}


def case_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NIX_CONFIG", "_NIX_TEST_SHARED")}
    env.update(ENV)
    return env


def nix_env(case: Case) -> dict[str, str]:
    """Nix's side: the case's experimental features also in NIX_CONFIG, for the queries that
    follow the build (show-derivation, --realise); ours gets them on its command line only."""
    env = case_env()
    if "ca-derivations" in case.options:
        env["NIX_CONFIG"] = "extra-experimental-features = ca-derivations"
    return env


def _load() -> tuple[Path | None, list[Case], str]:
    """(tests dir, cases, why there are none); discovery is cached beside the corpus."""
    if shutil.which("nix-build") is None:
        return None, [], "needs nix-build on PATH"
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "a") as lock:  # xdist workers collect at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _load_locked()


def _load_locked() -> tuple[Path | None, list[Case], str]:
    try:
        tests = fetch()
    except CorpusUnavailable as e:
        return None, [], str(e)
    prepare(tests)
    key = hashlib.sha256(Path(__file__).with_name("nixtests.py").read_bytes()
                         + (tests / "config.nix").read_bytes()).hexdigest()[:16]
    cached = tests.parent / f"cases-{key}.json"
    try:
        return tests, [Case(**c) for c in json.loads(cached.read_text())], ""
    except (OSError, ValueError, TypeError):
        pass
    cases = discover(tests, case_env())
    cached.write_text(json.dumps([c.__dict__ for c in cases]))
    return tests, cases, ""


TESTS, CASES, WHY = _load()

# Differences that remain, each with the reason behind it. Strict: one that starts agreeing
# fails the run, so the list cannot go stale.
KNOWN_DIFFERENCES: dict[str, str] = {
    "structured-attrs.nix": "Nix 2.8 sets NIX_ATTRS_JSON_FILE to the host's build directory "
                            "(local-derivation-goal.cc:1101, tmpDir), absent in its sandbox, so "
                            "its builder fails; ours points it at /build/.attrs.json (Nix 2.9+)",
    "readfile-context.nix": "import from derivation in the private eval store: Nix 2.8's "
                            "readFile (primops.cc:1474, isInStore of the real path) gives no "
                            "context under local?root=..., so the .drv lacks the input",
}
# builders that write the time (tests/check.nix, tests/ca/nondeterministic.nix): two builds
# differ on Nix as well, so only the outcome and the output names are compared
NONDETERMINISTIC = {"check.nix:nondeterministic", "ca/nondeterministic.nix:currentTime",
                    "ca/nondeterministic.nix:dep1", "ca/nondeterministic.nix:dep2"}


def test_corpus_available() -> None:
    """Nix's tests were fetched and give derivations (a fresh machine fetches them)."""
    if WHY == "needs nix-build on PATH":
        pytest.skip(WHY)
    assert not WHY, f"Nix's functional tests are unavailable: {WHY}"
    assert len(CASES) >= 80, [c.id for c in CASES]


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[case.id])] \
        if case.id in KNOWN_DIFFERENCES else []
    return pytest.param(case, id=case.id, marks=marks)


def ours(case: Case, tmp_path: Path) -> Result:
    assert TESTS is not None
    cmd = [*ocibuild_command(), "nix-build", "--store", str(tmp_path / "store"), "--json",
           *NIX_BUILD_OPTS, *case.args(TESTS)]
    proc = _run(cmd, env=case_env())
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode == 0:
        doc = json.loads(proc.stdout)
        res.drv_path = doc["drvPath"]
        res.outputs = {n: OutputInfo(o["path"], o["narHash"], o["narSize"],
                                     sorted(o["references"]))
                       for n, o in doc["outputs"].items()}
    return res


@pytest.mark.nix
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_nix_tests(case: Case, tmp_path: Path) -> None:
    assert TESTS is not None
    with store_lock(exclusive=False):
        mine = ours(case, tmp_path)
    with store_lock(exclusive=True):
        ref = run_nix_build(case.args(TESTS), env=nix_env(case), cwd=TESTS, timeout=900)
    errors = [e.first for e in nix_errors(ref.stderr)]
    if os.environ.get("NIXTESTS_REPORT"):  # one JSON line per case, for the closing note
        with open(os.environ["NIXTESTS_REPORT"], "a") as f:
            f.write(json.dumps({"case": case.id, "nix": ref.rc, "ours": mine.rc,
                                "nix_error": errors[:1], "our_error": our_reason(
                                    mine.stderr) if mine.rc else ""}) + "\n")
    if ref.rc != 0:
        assert mine.rc != 0, f"{case.id}: ours built it, Nix failed with: {errors}"
        return  # reasons are not compared yet: fetchurl, max-silent-time, closeLog differ
    assert mine.rc == 0, f"{case.id}: ours failed, Nix built it: {our_reason(mine.stderr)}\n" \
        f"{mine.stderr[-2000:]}"
    problems = []
    if case.id in NONDETERMINISTIC:
        assert sorted(mine.outputs) == sorted(ref.outputs)
        return
    if mine.drv_path != ref.drv_path:
        problems.append(f"drvPath: ours {mine.drv_path}, nix {ref.drv_path}")
    if mine.outputs != ref.outputs:
        for name in sorted(set(mine.outputs) | set(ref.outputs)):
            a, b = mine.outputs.get(name), ref.outputs.get(name)
            if a != b:
                problems.append(f"output {name}: ours {a}, nix {b}")
    assert not problems, f"{case.id}:\n" + "\n".join(problems)
