"""``ocibuild nix-build`` takes nix-build's options: settings (``--option``, ``--NAME VALUE``),
``-j``/``--cores``/``-k``/``-K``/``--check``/``-o``/``--dry-run``/``-Q``; unknown ones are
refused with one line (exit 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.command import settings_as_options
from pytest_ocibuild.nix.options import NixOptions, sandbox_binds
from pytest_ocibuild.nix.to_request import NixSettings
from tests.nixglue.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None or shutil.which("runc") is None
    or os.geteuid() != 0, reason="needs Nix, runc and root")
NIX = """{ bbdir, nonce ? "" }:
let lib = import @ROOT@/nix/lib.nix { inherit bbdir; }; inherit (lib) mk; in
rec {
  t = mk "opt-t" "echo ${nonce} > $out" {};
  two = mk "opt-two" "echo ${nonce} > $out; echo dev > $dev" { outputs = [ "out" "dev" ]; };
  feat = mk "opt-feat" "echo ${nonce} > $out" { requiredSystemFeatures = [ "foo" ]; };
  fail = mk "opt-fail" "echo ${nonce} > scratch-file; echo bad; exit 3" {};
  ok = mk "opt-ok" "echo ${nonce} > $out" {};
  both = mk "opt-both" "cat ${fail} ${ok} > $out" {};
  ca = mk "opt-ca" "echo ${nonce} > $out" {
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  on-ca = mk "opt-on-ca" "cat ${ca} > $out" {};
  cores = mk "opt-cores" "echo $NIX_BUILD_CORES > $out" {};
  quiet = mk "opt-quiet" "echo ${nonce} started; sleep 30; echo > $out" {};
}
""".replace("@ROOT@", str(ROOT))


# --- parsing (no builds) ---------------------------------------------------------------------

def test_settings_fold_into_nix_settings() -> None:
    opts = NixOptions()
    for name, value in [("system-features", "foo bar"), ("extra-system-features", "baz"),
                        ("cores", "3"), ("build-max-jobs", "4"), ("build-timeout", "7"),
                        ("extra-experimental-features", "ca-derivations"),
                        ("sandbox", "true"), ("substituters", "")]:
        opts.set(name, value)
    s = opts.apply(NixSettings(features=frozenset({"kvm"})), {})
    assert isinstance(s, NixSettings)
    assert s.features == {"foo", "bar", "baz", "ca-derivations"} and s.cores == 3
    assert (opts.max_jobs, opts.timeout, opts.ignored) == (4, 7.0, ["substituters"])
    # without an explicit system-features, nix.conf's stay; ca-derivations only if enabled
    kept = NixOptions().apply(NixSettings(features=frozenset({"kvm", "ca-derivations"})), {})
    assert kept.features == {"kvm"}  # type: ignore[attr-defined]
    assert NixOptions().nix_args() == []
    opts.show_trace = True
    assert opts.nix_args() == ["--extra-experimental-features", "ca-derivations",
                               "--show-trace"]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("frobnicate", "1", "--option frobnicate: not supported"),
    ("sandbox", "false", "always builds in a sandbox"),
    ("sandbox", "relaxed", "always builds in a sandbox"),
    ("cores", "x", "is not an integer"),
    ("sandbox-paths", "/nix/store", "would cover the build's own /nix/store"),
    ("sandbox-paths", "/a=/b", "binding a host path at another place"),
    ("extra-cores", "1", "--option extra-cores: not supported"),
])
def test_refused_settings_name_themselves(name: str, value: str, message: str) -> None:
    with pytest.raises(NixError, match=message):
        NixOptions().set(name, value)


def test_sandbox_paths(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    binds, bin_sh = sandbox_binds([str(tmp_path / "x"), "/bin/sh=/bin/busybox",
                                   f"{tmp_path}/missing?"])
    assert binds == (str(tmp_path / "x"),) and bin_sh
    with pytest.raises(NixError, match="does not exist"):
        sandbox_binds([f"{tmp_path}/missing"])


def test_settings_as_flags() -> None:
    defined = {"--cores": None, "--option": None}
    assert settings_as_options(
        ["--system-features", "a b", "f.nix", "--no-require-sigs", "--sandbox", "--cores", "2",
         "--", "--keep-going"], defined) == [
        "--option", "system-features", "a b", "f.nix", "--option", "require-sigs", "false",
        "--option", "sandbox", "true", "--cores", "2", "--", "--keep-going"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_ocibuild", "nix-build", *args],
                          capture_output=True, text=True, check=False, cwd=cwd)


def test_unknown_option_is_one_line_exit_2() -> None:
    res = run_cli("x.nix", "--frobnicate")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "ocibuild nix-build: error: unrecognized option '--frobnicate' (not supported by "
        "ocibuild nix-build)"]
    res = run_cli("x.nix", "--option", "frobnicate", "1")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "ocibuild: error: --option frobnicate: not supported by ocibuild nix-build"]


def test_help_groups_as_nix_builds_manual() -> None:
    out = run_cli("--help").stdout
    own, common, ours = (out.index(g) for g in ("nix-build options:", "common options:",
                                                 "ocibuild options:"))
    assert own < common < ours
    assert all(o in out[own:common] for o in ("--no-out-link", "--dry-run", "--out-link"))
    assert all(o in out[common:ours] for o in ("--max-jobs", "--cores", "--keep-going",
                                               "--keep-failed", "--option", "--show-trace",
                                               "--max-silent-time", "--check", "-Q"))


# --- builds ----------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path, NIX)


def build(corpus: Path, attr: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--store", str(corpus / "store"), str(corpus / "t.nix"), "-A", attr,
                   "--arg", "bbdir", str(corpus / "bb"), "--argstr", "nonce",
                   os.urandom(6).hex(), *args, cwd=corpus)


@needs_nix
def test_system_features_make_required_features_buildable(corpus: Path) -> None:
    refused = build(corpus, "feat")
    assert refused.returncode == 2 and "with features {foo} is required" in refused.stderr
    ok = build(corpus, "feat", "--option", "system-features", "foo bar")
    assert ok.returncode == 0, ok.stderr
    assert build(corpus, "feat", "--system-features", "foo").returncode == 0


@needs_nix
def test_ca_derivations_through_experimental_features(corpus: Path) -> None:
    refused = build(corpus, "on-ca")
    assert refused.returncode == 2, refused.stderr
    ok = build(corpus, "on-ca", "--extra-experimental-features", "ca-derivations")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith("-opt-on-ca")


@needs_nix
def test_out_link_dry_run_cores(corpus: Path) -> None:
    dry = build(corpus, "t", "--dry-run", "-o", "res")
    assert dry.returncode == 0 and dry.stdout == ""
    assert "this derivation will be built:" in dry.stderr and not os.path.lexists(
        corpus / "res")
    res = build(corpus, "two", "-o", "res", "--cores", "3", "-Q")
    assert res.returncode == 0, res.stderr
    out, dev = sorted(res.stdout.split(), key=lambda p: p.endswith("-dev"))
    assert os.readlink(corpus / "res").endswith(os.path.basename(out))
    assert os.readlink(corpus / "res-dev").endswith(os.path.basename(dev))
    assert (corpus / "res-dev").read_text() == "dev\n"
    cores = build(corpus, "cores", "--option", "cores", "3", "--export", str(corpus / "e"))
    assert cores.returncode == 0, cores.stderr
    assert (corpus / "e" / os.path.basename(cores.stdout.strip())).read_text() == "3\n"


@needs_nix
def test_keep_failed_and_keep_going(corpus: Path) -> None:
    res = build(corpus, "fail", "-K")
    assert res.returncode == 1
    note = [ln for ln in res.stderr.splitlines() if ln.startswith("note: keeping build dir")]
    assert len(note) == 1, res.stderr
    kept = Path(note[0].split("'")[1])
    try:
        assert (kept / "scratch-file").is_file()
    finally:
        shutil.rmtree(kept)
    going = build(corpus, "both", "-k", "-j", "1")
    assert going.returncode == 1
    assert "failed with exit code 3" in going.stderr.splitlines()[-1]


@needs_nix
def test_check_rebuilds_and_compares(corpus: Path) -> None:
    args = ("--argstr", "nonce", "fixed")
    first = run_cli("--check", "--store", str(corpus / "store"), str(corpus / "t.nix"),
                    "-A", "t", "--arg", "bbdir", str(corpus / "bb"), *args)
    assert first.returncode != 0 and "are not valid, so checking is not possible" in \
        first.stderr
    base = ["--store", str(corpus / "store"), str(corpus / "t.nix"), "-A", "t", "--arg",
            "bbdir", str(corpus / "bb"), *args]
    assert run_cli(*base).returncode == 0
    again = run_cli(*base, "--check")
    assert again.returncode == 0, again.stderr


@needs_nix
def test_max_silent_time_kills_a_silent_build_with_nix_s_message(corpus: Path) -> None:
    assert build(corpus, "t", "--max-silent-time", "5").returncode == 0
    res = build(corpus, "quiet", "--max-silent-time", "1")
    assert res.returncode != 0
    assert "timed out after 1 seconds of silence" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
