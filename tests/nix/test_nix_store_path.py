"""Store paths: parsing, name validation and every way Nix 2.8 computes them."""

from __future__ import annotations

import pytest

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.hashes import hash_bytes, parse_hash
from pytest_ocibuild.nix.store_path import (
    StorePath,
    hash_placeholder,
    make_fixed_output_path,
    make_output_path,
    make_store_path,
    make_text_path,
    output_path_name,
    validate_name,
)

HELLO = b"hello\n"
SIMPLE = "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-simple"


def test_to_file_vector() -> None:
    assert make_text_path("foo", b"bar").absolute == \
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"


def test_make_store_path_is_text_path() -> None:
    inner = hash_bytes("sha256", b"bar").hex
    assert make_store_path("text", inner, "foo") == make_text_path("foo", b"bar")


def test_text_path_references_change_the_path() -> None:
    a = make_text_path("x", b"y")
    b = make_text_path("x", b"y", [SIMPLE])
    assert a != b
    # references are sorted and de-duplicated
    other = "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    assert make_text_path("x", b"y", [SIMPLE, other]) == make_text_path("x", b"y", [other, SIMPLE])


# Paths Nix 2.8 assigned to the probes in nix/probes/derivations.nix (all write "hello\n").
@pytest.mark.parametrize(("name", "hash_", "recursive", "expected"), [
    ("flat-sha256", "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
     False, "xnn6zlbfipi9n3yiyzlrsgxax38vrxhd"),
    ("rec-sha256", "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
     True, "wv7wjgash03bmkjmxlpsyi4k5g821n4k"),
    ("flat-sha1", "sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm", False,
     "q6nl8rpbwbn81kss6kklr86mmwwpxl8s"),
    ("rec-sha1", "sha1:0deb52c2735eb38d360f976b7b3823c4ad05cce7", True,
     "v4rnih172hh4kvib0ag5gkcjh203lmlw"),
    ("flat-md5", "md5:b1946ac92492d2347c6235b4d2611184", False, "zdx3x739klpva5cnxlvm0i54v1nqvdcf"),
    ("rec-md5", "md5:d3ea68e810bc7f9297024c01b858679e", True, "ds5iss27q1vnjiw72lya3yhljhn7wjcd"),
    ("flat-sha512", "sha512-58IrmUxZ2c8rSOVJseJGZmNgRZMNPafBrLKZ0cO3+TH5Sq5B7dosKyB6NuEPi8uNRSI+"
     "VIePWzFufOO2vAGWKQ==", False, "s5v5nya0hpcw5x4q5kwfnmksc7q1xjf6"),
])
def test_fixed_output_paths(name: str, hash_: str, recursive: bool, expected: str) -> None:
    path = make_fixed_output_path(name, parse_hash(hash_), recursive=recursive)
    assert path == StorePath(expected, name)


def test_fixed_output_path_with_references() -> None:
    # what Nix 2.8 registered for probes/sandbox.nix rec-fixed-with-ref (see docs/nix-sandbox.md)
    h = parse_hash("sha256-BDUJA52nOxM+g8zqWCUQDIEFessqmssMhJdkRkyMwBM=")
    assert make_fixed_output_path("rec-fixed-with-ref", h, recursive=True, references=[SIMPLE]) \
        .hash_part == "90vicj2sx22dj1w0ggfjw597fxmdfp83"
    assert make_fixed_output_path("rec-fixed-with-ref", h, recursive=True) \
        .hash_part == "0v9rym5lrwb12v3i3a8bm8b0d1wx079z"
    with pytest.raises(NixError):
        make_fixed_output_path("x", hash_bytes("sha1", HELLO), recursive=True, references=[SIMPLE])


def test_output_path() -> None:
    assert output_path_name("multi", "out") == "multi"
    assert output_path_name("multi", "dev") == "multi-dev"
    p = make_output_path("dev", "00" * 32, "multi")
    assert p.name == "multi-dev"


def test_hash_placeholder() -> None:
    # env["out"] of a floating content-addressed derivation (probes/ca.nix "floating")
    assert hash_placeholder("out") == "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    assert hash_placeholder("dev") == "/02qcpld1y6xhs5gz9bchpxaw0xdhmsp5dv88lh25r2ss44kh8dxz"


def test_parse_and_format() -> None:
    p = StorePath.from_absolute(SIMPLE)
    assert (p.hash_part, p.name) == ("8x8l84nmdsklq5fb792y5lpqici6vvxq", "simple")
    assert str(p) == p.absolute == SIMPLE
    assert StorePath.from_digest(p.digest, p.name) == p
    assert not p.is_derivation
    assert StorePath.from_base_name(p.base_name + ".drv").is_derivation


@pytest.mark.parametrize("bad", [
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq",  # no name
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-",  # empty name
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq_simple",  # no dash
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxe-simple",  # 'e' not in the alphabet
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvx-simple",  # short hash
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-sim ple",  # space
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-simple/sub",  # below a store path
    "/nix/store//8x8l84nmdsklq5fb792y5lpqici6vvxq-simple",
    "/nix/other/8x8l84nmdsklq5fb792y5lpqici6vvxq-simple",
    "8x8l84nmdsklq5fb792y5lpqici6vvxq-simple",
    "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-" + "a" * 212,
])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(NixError) as e:
        StorePath.from_absolute(bad)
    assert "\n" not in str(e.value)


def test_names() -> None:
    assert validate_name("a" * 211)
    for ok in ("a+b-c.d_e?f=g", ".dot", "-dash", "UPPER9"):
        assert validate_name(ok) == ok
    for bad in ("", "a b", "a/b", "ä", "a:b", "a@b", "a" * 212):
        with pytest.raises(NixError):
            validate_name(bad)
