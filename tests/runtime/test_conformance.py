"""One conformance suite over every real runtime backend (as the castore suite runs over stores).

Under each backend the same build gives the same outputs as under runc: ``examples/hello.yaml``,
the bundled ``cases/`` (their expected trees, goldens and failures, run as a user runs them:
``pytest cases -o ocibuild_runtime=NAME``) and the ``nix/`` differential corpus (store paths,
NAR hashes and references equal runc's, which tests/nixdiff checks against nix-build). What a
backend cannot do is listed in ``LIMITS`` with the reason: such a case must fail (strict), and
every other one must pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.runtime.conftest import ROOT, backend_params, ocibuild, require

_FOD_AS_USER = ("runsc as a normal user: Nix fixed-output builds fail (not diagnosed yet; "
                "as root they pass)")
# backend -> {case test id (file::case): why it cannot pass under that backend}
LIMITS: dict[str, dict[str, str]] = {
    "runc": {},
    "crun": {},
    "runsc": {
        "constraints.yaml::network-access": "runsc 20221219 cannot share the host network here "
        "(--network=host: the gofer fails setting up its chroot); refused with one line",
        **({} if os.geteuid() == 0 else {
            "nix.yaml::fixed-flat-sha256": _FOD_AS_USER, "nix.yaml::fixed-rec-sha256":
            _FOD_AS_USER, "nix.yaml::deps-on-fixed": _FOD_AS_USER}),
    },
    "bwrap": {},
}


@pytest.fixture(scope="module")
def runc_hello(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    res = ocibuild("build", "--runtime", "runc", "--json", "examples/hello.yaml",
                   tmp=tmp_path_factory.mktemp("runc"))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["outputs"]


@pytest.mark.runc
@pytest.mark.parametrize("runtime", backend_params())
def test_hello_same_outputs(runtime: str, runc_hello: dict[str, object], tmp_path: Path) -> None:
    require(runtime)
    res = ocibuild("build", "--runtime", runtime, "--no-cache", "--json", "examples/hello.yaml",
                   tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["outputs"] == runc_hello


@pytest.mark.runc
@pytest.mark.parametrize("runtime", [p for p in backend_params() if p.id != "runc"])
def test_bundled_cases(runtime: str, tmp_path: Path) -> None:
    """``pytest cases`` under the backend: every case passes but those in LIMITS, which fail."""
    require(runtime)
    report = tmp_path / "cases.xml"
    res = ocibuild_pytest(tmp_path, "cases", "-o", f"ocibuild_runtime={runtime}",
                          f"--junitxml={report}")
    assert report.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    outcomes = junit_outcomes(report)
    assert len(outcomes) >= 50, res.stdout[-3000:]
    failed = {case for case, ok in outcomes.items() if not ok}
    expected = set(LIMITS[runtime])
    tail = "\n".join(line for line in res.stdout.splitlines() if "FAILED" in line
                     or "Error" in line)[-6000:]
    assert failed - expected == set(), f"fail under {runtime}:\n{tail}"
    assert expected - failed == set(), f"listed in LIMITS[{runtime!r}] but pass now"


def ocibuild_pytest(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:

    run = tmp / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "OCIBUILD_STORE": str(tmp / "store"), "XDG_RUNTIME_DIR": str(run)}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-W",
                           "ignore::pytest.PytestWarning", f"--basetemp={tmp / 'pytest'}",
                           "-p", "no:xdist", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def junit_outcomes(report: Path) -> dict[str, bool]:
    """``file::case`` -> passed, from a JUnit XML report (skips count as passed: none
    is expected; a case's own skip names its reason in the report)."""
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        # classname "cases.constraints.yaml" -> "constraints.yaml"
        name = ".".join(case.get("classname", "").split(".")[-2:]) + f"::{case.get('name')}"
        found[name] = case.find("failure") is None and case.find("error") is None
    return found


# --- the nix/ corpus: every case that builds, in one derivation per backend -----------------

# the aggregate copies each case's outputs to $out/GROUP.CASE/OUTPUT, so one build per backend
# compares them all (`-j 2`); floating CA (ca.*) and failing cases are left to tests/nixdiff
AGGREGATE = """{{ bbdir }}:
let
  c = import {corpus} {{ inherit bbdir; }};
  lib = import {lib} {{ inherit bbdir; }};
  copy = g: k: let d = c.${{g}}.${{k}}; in
    ["mkdir $out/${{g}}.${{k}}"] ++ map (o: "cp -a ${{d.${{o}}}} $out/${{g}}.${{k}}/${{o}}")
      (d.outputs or ["out"]);
in lib.mk "runtime-conformance" (builtins.concatStringsSep "\\n"
  (["mkdir $out"] ++ builtins.concatLists [ {copies} ])) {{}}
"""
# cases no backend builds (ours refuses them: tests/nixdiff's strict xfails)
NOT_BUILT = {"attrs.odd-env", "attrs.odd-environ"}
# backend -> {corpus case: why its outputs differ from runc's under that backend}
CORPUS_LIMITS: dict[str, dict[str, str]] = {
    "runc": {},
    "crun": {
        "sandbox.identity": "stdin is an empty pipe, not /dev/null: crun would chown the host's "
                            "/dev/null to the build's uid as the container's stdio",
    },
    "runsc": {  # gVisor's own kernel: what the probes of /dev, /proc and mounts see differs
        "sandbox.dev": "gVisor reports device numbers 0:0 and /dev/pts mode 555",
        "sandbox.fs": "gVisor adds a /sys of its own to the root",
        "sandbox.mounts": "gVisor lists its own /sys and /tmp (bound to the bundle's root/tmp "
                          "so the disk budget sees it) as mounts",
        "sandbox.identity": "no domain name ('' not '(none)'); stdin is an empty pipe (as with "
                            "crun), shown as host:[1]",
        "sandbox.network": "an unreachable address gives 'No route to host', not 'Network is "
                           "unreachable'",
        "sandbox.proc": "gVisor's /proc/self/status lacks NoNewPrivs and CapAmb, its uid_map is "
                        "the whole range, personality and the cgroup namespace do not show",
    },
    "bwrap": {
        "sandbox.dev": "bwrap 0.8's --dev makes a /dev of its own (with /dev/core), its entries "
                       "owned by the one mapped uid or 65534 where runc's are 0:0",
        "sandbox.fs": "bwrap maps only the build user: what root owns shows 65534 (as in Nix's "
                      "sandbox), not runc's mapped container root 0",
        "sandbox.proc": "one uid_map line and setgroups deny (as Nix), and an empty bounding "
                        "capability set",
    },
}
# backend -> {corpus case: why it fails to build there}: left out of that backend's
# aggregate (one failure fails the whole derivation) and checked to fail on its own
CORPUS_FAILS: dict[str, dict[str, str]] = {
    "runsc": {"sandbox.pid1": "gVisor lets the build's pid 1 kill itself (exit 137), where "
                              "Linux ignores a signal to a pid-namespace init without a handler"},
}


@pytest.fixture(scope="module")
def corpus_cases(bbdir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The corpus cases that build (no expected error, not floating CA, not NOT_BUILT),
    evaluated in a private store (as ``ocibuild nix-build`` does: a normal user too)."""
    from tests.nixdiff.conftest import case_env, corpus_cases

    expr = (f"let c = import {ROOT / 'nix' / 'default.nix'} {{ bbdir = {bbdir}; }}; in "
            "builtins.mapAttrs (g: builtins.mapAttrs (n: d: d.expectedError or null)) c")
    store = tmp_path_factory.mktemp("eval-store")
    res = subprocess.run(["nix-instantiate", "--store", f"local?root={store}", "--eval",
                          "--strict", "--json", "-E", expr], env=case_env("ca.index"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    failing = {f"{g}.{c}" for g, cs in json.loads(res.stdout).items()
               for c, err in cs.items() if err is not None}
    return [c for c in corpus_cases() if c not in failing and not c.startswith("ca.")
            and c not in NOT_BUILT]


def aggregate(cases: list[str], tmp: Path) -> Path:
    """A .nix file whose one derivation copies every case's outputs (AGGREGATE)."""
    copies = " ".join(f'(copy "{g}" "{k}")' for g, k in (c.split(".", 1) for c in cases))
    path = tmp / "conformance.nix"
    path.write_text(AGGREGATE.format(corpus=ROOT / "nix" / "default.nix",
                                     lib=ROOT / "nix" / "lib.nix", copies=copies))
    return path


def corpus_outputs(runtime: str, aggregate: Path, bbdir: Path, tmp: Path) -> dict[str, Path]:
    """``GROUP.CASE/OUTPUT`` -> its exported tree, built under ``runtime``."""
    from tests.nixdiff.conftest import case_env

    export = tmp / "export"
    env = case_env("conformance")
    res = ocibuild("nix-build", "--runtime", runtime, "-j", "2", "--export", str(export),
                   str(aggregate), "--arg", "bbdir", str(bbdir), tmp=tmp, env=env)
    assert res.returncode == 0, f"under {runtime}:\n{res.stderr[-6000:]}"
    (top,) = export.iterdir()  # <hash>-runtime-conformance
    return {f"{case.name}/{out.name}": out for case in sorted(top.iterdir())
            for out in sorted(case.iterdir())}


@pytest.fixture(scope="module")
def runc_corpus(corpus_cases: list[str], bbdir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runc")
    return corpus_outputs("runc", aggregate(corpus_cases, tmp), bbdir, tmp)


@pytest.mark.nix
@pytest.mark.xfail(os.geteuid() != 0, strict=True, reason="as a normal user the backends' id "
                   "mappings differ from rootless runc's in sandbox.proc, and runsc's "
                   "fixed-output builds need the host network it cannot share: the per-case "
                   "limits above are the root ones")
@pytest.mark.parametrize("runtime", [p for p in backend_params() if p.id != "runc"])
def test_nix_corpus(runtime: str, corpus_cases: list[str], bbdir: Path,
                    runc_corpus: dict[str, Path], tmp_path: Path) -> None:
    """Every corpus case's outputs equal runc's, but those in CORPUS_LIMITS, which differ, and
    those in CORPUS_FAILS, which fail to build."""
    from tests.nixdiff.conftest import case_env, tree_diff

    require(runtime)
    fails = CORPUS_FAILS.get(runtime, {})
    ours = corpus_outputs(runtime, aggregate([c for c in corpus_cases if c not in fails],
                                             tmp_path), bbdir, tmp_path)
    assert len(ours) >= 70
    assert set(ours) == {k for k in runc_corpus if k.split("/")[0] not in fails}
    for case in fails:  # strict: each must still fail under this backend
        res = ocibuild("nix-build", "--runtime", runtime, str(ROOT / "nix" / "default.nix"),
                       "-A", case, "--arg", "bbdir", str(bbdir), tmp=tmp_path,
                       env=case_env(case))
        assert res.returncode == 1, f"{case} builds under {runtime} now: drop it from CORPUS_FAILS"
    differ = {}
    for name, tree in ours.items():  # tree_diff's report: "ours" is this backend, "nix" runc
        if diff := tree_diff(tree, runc_corpus[name]):
            differ[name.split("/")[0]] = diff
    expected = set(CORPUS_LIMITS[runtime])
    unexpected = {k: v for k, v in differ.items() if k not in expected}
    assert not unexpected, f"differ from runc under {runtime}: {sorted(unexpected)}: " + json.dumps(
        unexpected, indent=1, default=str)[:6000]
    assert expected - set(differ) == set(), f"listed in CORPUS_LIMITS[{runtime!r}], same now"
