"""hashDerivationModulo, .drv paths and output paths against what Nix 2.8 wrote (fixtures)."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.derivation import Derivation, Output, parse_drv, write_drv
from pytest_ocibuild.nix.drv_hash import (
    check_derivation,
    derivation_path,
    derivation_type,
    file_resolver,
    hash_derivation_modulo,
    output_paths,
)
from tests.nix.conftest import DRV_FILES, FIXTURES, fixture_resolver


def load(name: str) -> Derivation:
    path = next(p for p in DRV_FILES if p.name[33:] == name + ".drv" and p.name[32] == "-")
    return parse_drv(path.read_bytes(), source=path.name)


@pytest.mark.parametrize("path", DRV_FILES, ids=lambda p: p.name[33:])
def test_drv_path_and_outputs(path) -> None:
    drv = parse_drv(path.read_bytes(), source=path.name)
    drv_path = "/nix/store/" + path.name
    assert derivation_path(drv).absolute == drv_path
    computed = output_paths(drv, fixture_resolver)
    assert {o: (p.absolute if p else "") for o, p in computed.items()} == \
        {o: out.path for o, out in drv.outputs.items()}
    check_derivation(drv, fixture_resolver, drv_path)


def test_types() -> None:
    assert derivation_type(load("simple")) == "input-addressed"
    assert derivation_type(load("flat-md5")) == "fixed"
    assert derivation_type(load("floating")) == "floating"
    assert derivation_type(load("on-floating")) == "deferred"


def test_multiple_outputs() -> None:
    paths = output_paths(load("multi"), fixture_resolver)
    assert sorted(paths) == ["dev", "lib", "out"]
    assert paths["dev"].name == "multi-dev" and paths["out"].name == "multi"


def test_fixed_twins_merge_in_consumer() -> None:
    twins = [parse_drv(p.read_bytes(), source=p.name) for p in DRV_FILES
             if p.name.endswith("-flat-sha256.drv")]
    assert len(twins) == 2
    a, b = twins
    assert a != b
    ha = hash_derivation_modulo(a, fixture_resolver)
    assert ha == hash_derivation_modulo(b, fixture_resolver)
    assert not ha.deferred
    # on-fixed depends on both twins: its modulo ATerm lists the shared hash once
    consumer = load("on-fixed")
    assert len(consumer.input_drvs) == 3
    check_derivation(consumer, fixture_resolver)


def test_deferred() -> None:
    h = hash_derivation_modulo(load("on-on-floating"), fixture_resolver)
    assert h.deferred
    assert output_paths(load("on-on-floating"), fixture_resolver) == {"out": None}
    assert output_paths(load("floating"), fixture_resolver) == {"dev": None, "out": None}


@pytest.mark.parametrize(("name", "expected"), [
    ("floating", "0d11c7e34e6445eec7395ccaa9c94563acfe54140f81168b650a73da664ab745"),
    ("on-floating", "d1f74f9148ca875a6ac19f874329434d40d519410c071d5bb720f4bab626a079"),
    ("on-on-floating", "59e4f2d950619306134bf09e0cf488f73994555470e7b0e44c5363799b5851e4"),
])
def test_deferred_hashes_match_realisations(name: str, expected: str) -> None:
    """Nix 2.8 keyed the realisations of these CA builds as ``sha256:<hash>!<output>``."""
    h = hash_derivation_modulo(load(name), fixture_resolver, mask_outputs=True)
    assert set(h.hashes.values()) == {expected}


def test_cache_avoids_rereading() -> None:
    calls: list[str] = []

    def counting(p: str) -> Derivation:
        calls.append(p)
        return fixture_resolver(p)

    cache: dict = {}
    drv = load("chain2")
    first = hash_derivation_modulo(drv, counting, cache=cache)
    n = len(calls)
    assert n == len(set(calls)) == 3  # chain, simple, multi: each read once
    assert hash_derivation_modulo(drv, counting, cache=cache) == first
    assert len(calls) == n


def test_tampered_output_is_detected() -> None:
    drv = load("simple")
    bad = dataclasses.replace(drv, env={**drv.env, "extra": b"1"})
    with pytest.raises(NixError, match="has incorrect output"):
        check_derivation(bad, fixture_resolver)
    with pytest.raises(NixError, match="hash to"):
        check_derivation(drv, fixture_resolver, "/nix/store/" + "0" * 32 + "-simple.drv")


def test_tampered_env_is_detected() -> None:
    drv = load("simple")
    masked = dataclasses.replace(drv, env={**drv.env, "out": b"/nix/store/elsewhere"})
    with pytest.raises(NixError, match="incorrect env out"):
        check_derivation(masked, fixture_resolver)


def _drv(outputs: dict[str, Output]) -> Derivation:
    return Derivation(outputs=outputs, system="x86_64-linux", builder="/b", env={"name": b"n"})


@pytest.mark.parametrize(("outputs", "message"), [
    ({}, "at least one output"),
    ({"out": Output("/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-n"), "dev": Output("")},
     "can't mix"),
    ({"dev": Output("", "sha256", "00" * 32)}, 'named "out"'),
    ({"out": Output("", "r:sha256"), "dev": Output("", "r:sha1")}, "same hash type"),
])
def test_type_errors(outputs: dict[str, Output], message: str) -> None:
    with pytest.raises(NixError, match=message):
        hash_derivation_modulo(_drv(outputs), fixture_resolver)


def test_missing_input_output() -> None:
    drv = load("chain")
    (dep, _), *rest = drv.input_drvs.items()
    bad = dataclasses.replace(drv, input_drvs={dep: ("nope",), **dict(rest)})
    with pytest.raises(NixError, match="no output 'nope'"):
        hash_derivation_modulo(bad, fixture_resolver)


def test_file_resolver(tmp_path) -> None:
    store = tmp_path / "nix" / "store"
    store.mkdir(parents=True)
    name = next(p.name for p in DRV_FILES if p.name.endswith("-simple.drv"))
    (store / name).write_bytes((FIXTURES / name).read_bytes())
    resolve = file_resolver(tmp_path)
    assert write_drv(resolve("/nix/store/" + name)) == (FIXTURES / name).read_bytes()
    with pytest.raises(NixError, match="cannot read derivation"):
        resolve("/nix/store/" + "0" * 32 + "-gone.drv")
