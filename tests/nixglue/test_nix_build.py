"""NixBuilder end to end: real runc builds compared with the real nix-build, plus caching,
failures and the CLI contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.errors import BuildFailed

pytestmark = pytest.mark.skipif(
    shutil.which("nix-build") is None or shutil.which("runc") is None or os.geteuid() != 0,
    reason="needs nix-build, runc and root")

NIX = """{ bbdir, nonce ? "" }:
let lib = import @ROOT@/nix/lib.nix { inherit bbdir; }; inherit (lib) mk; in
rec {
  a = mk "glue-a" "echo a${nonce} > $out" {};
  b = mk "glue-b" "mkdir $out; echo ${a} > $out/ref; echo $out > $out/self; ln -s ${a} $out/l" {};
  multi = mk "glue-multi" "echo $dev > $out; echo dev > $dev" { outputs = [ "out" "dev" ]; };
  fixed = mk "glue-fixed" "echo hello > $out" {
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; };
  exit3 = mk "glue-exit3" "echo bye; exit 3" {};
  missing = mk "glue-missing" "echo > $out" { outputs = [ "out" "second" ]; };
  ca = mk "glue-ca" "mkdir $out; echo $out > $out/self" { __contentAddressed = true; };
  on-ca = mk "glue-on-ca" "cat ${ca}/self > $out" {};
}
""".replace("@ROOT@", str(Path(__file__).resolve().parents[2]))
CA_ENV = {"NIX_CONFIG": "experimental-features = nix-command ca-derivations"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("glue")
    (d / "bb").mkdir()
    shutil.copy2("/bin/busybox", d / "bb" / "busybox")
    (d / "t.nix").write_text(NIX)
    return d


def ours(corpus: Path, attr: str, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(CA_ENV if "ca" in attr else {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest_ocibuild", "nix-build", "--store", str(store), "--json",
         str(corpus / "t.nix"), "-A", attr, "--arg", "bbdir", str(corpus / "bb"), *extra],
        capture_output=True, text=True, env=env, check=False)


def nix(corpus: Path, attr: str) -> dict[str, dict]:
    env = {**os.environ, "NIX_REMOTE": "", **(CA_ENV if "ca" in attr else {})}
    out = subprocess.run(
        ["nix-build", "--no-out-link", "--option", "sandbox", "true", "--option",
         "substituters", "", str(corpus / "t.nix"), "-A", attr, "--arg", "bbdir",
         str(corpus / "bb")], capture_output=True, text=True, env=env, check=True).stdout.split()
    infos = json.loads(subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json", *out],
        capture_output=True, text=True, env=env, check=True).stdout)
    return {i["path"]: i for i in infos}


@pytest.mark.parametrize("attr", ["b", "multi", "fixed", "ca", "on-ca"])
def test_same_paths_nar_hashes_and_references_as_nix(corpus: Path, tmp_path: Path,
                                                     attr: str) -> None:
    res = ours(corpus, attr, tmp_path / "store")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["drvPath"].endswith(f"-glue-{attr}.drv")
    ref = nix(corpus, attr)
    for o in doc["outputs"].values():
        if o["path"] not in ref:
            continue  # nix-build prints only the selected outputs
        n = ref.pop(o["path"])
        assert (o["narHash"], o["narSize"], o["references"]) == (
            n["narHash"], n["narSize"], sorted(n["references"]))
    assert ref == {}, f"Nix built paths we did not: {sorted(ref)}"


def test_rebuild_is_a_lookup_and_export_materialises(corpus: Path, tmp_path: Path) -> None:
    first = ours(corpus, "b", tmp_path / "store")
    assert first.returncode == 0, first.stderr
    logs = tmp_path / "bundles" / "logs"
    before = sorted(logs.iterdir()) if logs.exists() else []
    again = ours(corpus, "b", tmp_path / "store", "--export", str(tmp_path / "x"))
    assert again.stdout == first.stdout
    assert (sorted(logs.iterdir()) if logs.exists() else []) == before  # nothing ran
    [path] = [o["path"] for o in json.loads(again.stdout)["outputs"].values()]
    exported = tmp_path / "x" / os.path.basename(path)
    assert (exported / "self").read_text() == path + "\n"
    assert os.readlink(exported / "l").startswith("/nix/store/")


@pytest.mark.parametrize(("attr", "reason"), [
    ("exit3", r"builder for '/nix/store/[a-z0-9]{32}-glue-exit3.drv' failed with exit code 3"),
    ("missing", r"builder for '/nix/store/[a-z0-9]{32}-glue-missing.drv' failed to produce "
                r"output path for output 'second' at '/nix/store/[a-z0-9]{32}-glue-missing"
                r"\.drv\.chroot/nix/store/[a-z0-9]{32}-glue-missing-second'"),
])
def test_failures_are_reported_as_nix_does(corpus: Path, tmp_path: Path, attr: str,
                                           reason: str) -> None:
    import re

    res = ours(corpus, attr, tmp_path / "store")
    assert res.returncode == 1 and res.stdout == ""
    last = res.stderr.strip().splitlines()[-1]
    assert re.fullmatch("ocibuild: error: " + reason, last), res.stderr
    if attr == "exit3":
        assert "bye" in res.stderr  # the log tail comes first


def test_builder_api_and_no_nix_store_writes(corpus: Path, tmp_path: Path) -> None:
    """A fresh derivation: evaluated into a private store, nothing lands in /nix/store."""
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.nix.build import NixBuilder
    from pytest_ocibuild.nix.evaluate import instantiate
    from pytest_ocibuild.nix.to_request import NixSettings

    nonce = os.urandom(6).hex()
    evs = tmp_path / "eval"
    drv = instantiate(corpus / "t.nix", attr="b", args={"bbdir": str(corpus / "bb")},
                      argstrs={"nonce": nonce}, store_root=evs)
    assert not os.path.exists(drv) and (evs / drv.lstrip("/")).exists()
    ex = open_executor(store=tmp_path / "store", max_parallel=2)
    seen: list[str] = []
    builder = NixBuilder(ex, tmp_path / "nix", settings=NixSettings(cores=2),
                         progress=seen.append, store_root=evs)
    outputs = builder.build(drv)
    assert [s.split("'")[1].rsplit("-", 1)[1] for s in seen] == ["a.drv", "b.drv"]
    assert not os.path.exists(outputs["out"].path)
    a = [r for r in outputs["out"].references if r.endswith("-glue-a")]
    assert len(a) == 1 and not os.path.exists(a[0])
    with pytest.raises(BuildFailed):
        builder.build(instantiate(corpus / "t.nix", attr="exit3",
                                  args={"bbdir": str(corpus / "bb")}, store_root=evs))
