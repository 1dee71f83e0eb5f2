"""ATerm parsing and writing: round-trips on real .drv files, malformed input, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.derivation import (
    Derivation,
    Output,
    parse_drv,
    pass_as_file_path,
    write_drv,
)
from tests.nix.conftest import DRV_FILES, FIXTURES

SIMPLE = (FIXTURES / "hz2x24i08xmmnrwqwc533n5hxvhiq4l1-simple.drv").read_bytes()
ODD_ENV = next(FIXTURES.glob("*-odd-env.drv")).read_bytes()


def test_fixtures_present() -> None:
    assert len(DRV_FILES) >= 20


@pytest.mark.parametrize("path", DRV_FILES, ids=lambda p: p.name[33:])
def test_roundtrip(path) -> None:
    data = path.read_bytes()
    drv = parse_drv(data, source=path.name)
    assert write_drv(drv) == data


@pytest.mark.parametrize("path", DRV_FILES, ids=lambda p: p.name[33:])
def test_to_json_matches_show_derivation(path, show_derivation) -> None:
    drv = parse_drv(path.read_bytes(), source=path.name)
    assert drv.to_json() == show_derivation["/nix/store/" + path.name]


def test_model_of_simple() -> None:
    drv = parse_drv(SIMPLE, source="simple.drv")
    assert list(drv.outputs) == ["out"]
    assert drv.outputs["out"] == Output("/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-simple")
    assert drv.input_drvs == {}
    assert drv.system == "x86_64-linux"
    assert drv.args == ("sh", "-c", "echo simple > $out")
    assert drv.name == "simple"
    assert isinstance(drv.env["out"], bytes)
    assert drv.structured_attrs is None


def test_odd_env_values() -> None:
    drv = parse_drv(ODD_ENV, source="odd-env.drv")
    env = drv.env
    assert env["newlines"] == b"line1\nline2\r\nline3\n"
    assert env["tabs"] == b"a\tb\t"
    assert env["quotes"] == b"say \"hi\" 'there'"
    assert env["backslashes"] == b"a\\b\\\\c\\n"
    assert env["unicode"] == "héllo wörld ☃ 🦀".encode()
    assert env['weird key "x"\\'] == b"v"
    assert env["list"] == b"a b c 1 1  "  # true → "1", false/null → ""
    assert (env["yes"], env["no"], env["nul"], env["float"]) == (b"1", b"", b"", b"1.500000")


def test_structured_attrs() -> None:
    data = (FIXTURES / "mf31a20a9lpb5pcsbnk8f8lyvwvw6a7r-structured.drv").read_bytes()
    drv = parse_drv(data, source="s.drv")
    attrs = drv.structured_attrs
    assert attrs is not None and attrs["nested"] == {"a": [1, 2, {"b": "c"}], "s": 'q"\n'}
    assert drv.name == "structured"
    assert "name" not in drv.env


def test_env_bytes_roundtrip() -> None:
    drv = Derivation(outputs={"out": Output("")}, system="x", builder="/b",
                     env={"b": b"\xff\x00\\\"\t", "a": "text"})
    assert list(drv.env) == ["a", "b"]
    data = write_drv(drv)
    assert data.endswith(b'[("a","text"),("b","\xff\x00\\\\\\"\\t")])')
    assert parse_drv(data, source="x") == drv


def test_pass_as_file_path() -> None:
    assert pass_as_file_path("bar") == \
        "/build/.attr-1fcgpy7vc4ammr7s17j2xq88scswkgz23dqzc04g8sx5vcp2pppw"
    # observed in the sandbox (docs/nix-sandbox.md, probes/sandbox.nix inspect)
    assert pass_as_file_path("big").endswith("1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a")


def _swap(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


MALFORMED = {
    "empty": b"",
    "not-derive": b"Derivation([" + SIMPLE[8:],
    "bad-escape": _swap(SIMPLE, b'"sh"', b'"s\\h"'),
    "raw-newline": _swap(SIMPLE, b'"sh"', b'"s\nh"'),
    "escape-at-end": SIMPLE[:SIMPLE.index(b'"sh"') + 2] + b"\\",
    "missing-comma": _swap(SIMPLE, b'"sh","-c"', b'"sh""-c"'),
    "leading-comma": _swap(SIMPLE, b'["sh"', b'[,"sh"'),
    "trailing-comma": _swap(SIMPLE, b'"-c",', b'"-c",,'),
    "trailing-data": SIMPLE + b"\n",
    "unsorted-env": _swap(SIMPLE, b'("builder"', b'("zzz","1"),("builder"'),
    "duplicate-env": _swap(SIMPLE, b'("name"', b'("name","x"),("name"'),
    "bad-utf8-arg": _swap(SIMPLE, b'"sh"', b'"s\xffh"'),
    "bad-store-path": _swap(SIMPLE, b'"/nix/store/8x8l84', b'"/nix/stor/8x8l84'),
    "relative-src": _swap(SIMPLE, b'["/nix/store/ipy', b'["nix/store/ipy'),
    "unknown-algo": _swap(SIMPLE, b'-simple","",""', b'-simple","sha3",""'),
    "hash-no-algo": _swap(SIMPLE, b'-simple","",""', b'-simple","","00"'),
    "short-hash": _swap(SIMPLE, b'-simple","",""', b'-simple","sha1","00"'),
    "empty-system": _swap(SIMPLE, b'"x86_64-linux","/nix', b'"","/nix'),
    "unclosed": SIMPLE[:-1],
    "bad-list": _swap(SIMPLE, b'],["/nix/store/ipy', b'],("/nix/store/ipy'),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed(name: str) -> None:
    with pytest.raises(NixError) as e:
        parse_drv(MALFORMED[name], source="bad.drv")
    msg = str(e.value)
    assert msg.startswith("bad.drv: malformed derivation at byte ")
    assert "\n" not in msg


def test_every_truncation_fails() -> None:
    for n in range(len(SIMPLE)):
        with pytest.raises(NixError, match="malformed derivation at byte"):
            parse_drv(SIMPLE[:n], source="t.drv")


def test_not_bytes() -> None:
    with pytest.raises(NixError):
        parse_drv(SIMPLE.decode(), source="s")  # type: ignore[arg-type]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([SIMPLE, ODD_ENV]), st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255),
              st.sampled_from(["replace", "insert", "delete"])), min_size=1, max_size=4))
def test_fuzz_mutations(base: bytes, mutations: list[tuple[int, int, str]]) -> None:
    data = bytearray(base)
    for pos, byte, op in mutations:
        i = pos % (len(data) + 1)
        if op == "insert":
            data[i:i] = bytes((byte,))
        elif data and i < len(data):
            if op == "replace":
                data[i] = byte
            else:
                del data[i]
    try:
        drv = parse_drv(bytes(data), source="fuzz.drv")
    except NixError as e:
        assert "\n" not in str(e)
        return
    assert write_drv(drv) == bytes(data)  # whatever is accepted is canonical


_str = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
_paths = st.lists(st.sampled_from([
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-simple",
    "/nix/store/ipypcmrdcwakpazc347mka792bqdhzim-busybox-dir",
    "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo",
]), max_size=3)
_names = st.lists(st.sampled_from(["out", "dev", "lib", "doc"]), min_size=1, max_size=4,
                  unique=True)


@given(outputs=_names, drvs=st.dictionaries(st.sampled_from(
    ["/nix/store/hz2x24i08xmmnrwqwc533n5hxvhiq4l1-simple.drv",
     "/nix/store/qpaspi3s2lqjx2bppccszdxcpal4nbwp-multi.drv"]), _names, max_size=2),
    srcs=_paths, builder=_str, args=st.lists(_str, max_size=4),
    env=st.dictionaries(_str, st.binary(max_size=10), max_size=5))
def test_generated_roundtrip(outputs, drvs, srcs, builder, args, env) -> None:
    drv = Derivation(outputs={o: Output("") for o in outputs}, input_drvs=drvs,
                     input_srcs=tuple(srcs), system="x86_64-linux", builder=builder,
                     args=tuple(args), env=env)
    data = write_drv(drv)
    assert parse_drv(data, source="gen.drv") == drv
