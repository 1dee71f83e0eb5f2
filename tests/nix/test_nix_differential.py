"""Differential tests: instantiate the probes with the real nix-instantiate and compare."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ocibuild.nix.derivation import parse_drv, write_drv
from pytest_ocibuild.nix.drv_hash import check_derivation, derivation_path, file_resolver
from tests.nix.conftest import instantiate, needs_nix, probe_attrs

pytestmark = [needs_nix]
CA = ("--extra-experimental-features", "ca-derivations")


def _closure_drvs(drv_path: str) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", drv_path], check=True, capture_output=True,
                         text=True).stdout.split()
    return [p for p in out if p.endswith(".drv")]


def _check(drv_path: str, *extra: str) -> None:
    data = Path(drv_path).read_bytes()
    drv = parse_drv(data, source=drv_path)
    assert write_drv(drv) == data
    assert derivation_path(drv).absolute == drv_path
    check_derivation(drv, file_resolver("/"), drv_path)
    shown = json.loads(subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", *extra, "show-derivation",
         drv_path], check=True, capture_output=True, text=True).stdout)
    assert drv.to_json() == shown[drv_path]


def test_probe_count() -> None:
    assert len(probe_attrs("derivations.nix")) >= 20
    assert len(probe_attrs("ca.nix")) == 4


@pytest.mark.parametrize("attr", probe_attrs("derivations.nix"))
def test_derivations(attr: str, bbdir: Path) -> None:
    top = instantiate("derivations.nix", attr, bbdir)
    for drv_path in _closure_drvs(top):
        _check(drv_path)


@pytest.mark.parametrize("attr", probe_attrs("ca.nix"))
def test_content_addressed(attr: str, bbdir: Path) -> None:
    top = instantiate("ca.nix", attr, bbdir, *CA)
    for drv_path in _closure_drvs(top):
        _check(drv_path, "--extra-experimental-features", "ca-derivations")


@pytest.mark.parametrize("attr", probe_attrs("sandbox.nix"))
def test_sandbox_probes(attr: str, bbdir: Path) -> None:
    """The sandbox probes are derivations too; unsupported-system included."""
    top = instantiate("sandbox.nix", attr, bbdir)
    for drv_path in _closure_drvs(top):
        _check(drv_path)


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=12)
_key = _text.filter(lambda k: k not in ("", "outputs", "passAsFile", "__structuredAttrs",
                                        "__ignoreNulls", "outputHash", "outputHashAlgo",
                                        "outputHashMode", "allowedReferences", "name", "system",
                                        "builder", "args", "__contentAddressed", "__impure",
                                        "allowedRequisites", "disallowedReferences",
                                        "disallowedRequisites"))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(env=st.dictionaries(_key, _text, max_size=6), args=st.lists(_text, max_size=4),
       outputs=st.lists(st.sampled_from(["out", "dev", "bin", "lib", "a-b"]), min_size=1,
                        max_size=3, unique=True))
def test_random_env(env: dict[str, str], args: list[str], outputs: list[str],
                    tmp_path: Path) -> None:
    """Arbitrary env/args text goes through Nix (via JSON) and back to the same paths."""
    attrs = {**env, "name": "random", "system": "x86_64-linux", "builder": "/bin/sh",
             "args": args, "outputs": outputs}
    d = tmp_path / f"case-{abs(hash(json.dumps(attrs, sort_keys=True)))}"
    d.mkdir()
    (d / "attrs.json").write_text(json.dumps(attrs))
    nix = "derivation (builtins.fromJSON (builtins.readFile ./attrs.json))"
    (d / "default.nix").write_text(nix)
    drv_path = subprocess.run(["nix-instantiate", str(d / "default.nix")], check=True,
                              capture_output=True, text=True).stdout.strip().split("!")[0]
    _check(drv_path)
