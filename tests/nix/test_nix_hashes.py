"""nixbase32, hash string parsing/formatting, compress_hash."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix import nixbase32
from pytest_ocibuild.nix.hashes import HASH_SIZES, Hash, compress_hash, hash_bytes, parse_hash

VECTOR_HEX = "8a12321522fd91efbd60ebb2481af88580f61600"
VECTOR_32 = "00bgd045z0d4icpbc2yyz4gx48ak44la"


def test_nixbase32_vector() -> None:
    assert nixbase32.encode(bytes.fromhex(VECTOR_HEX)) == VECTOR_32
    assert nixbase32.decode(VECTOR_32).hex() == VECTOR_HEX


@pytest.mark.parametrize(("n", "chars"), [(0, 0), (1, 2), (16, 26), (20, 32), (32, 52), (64, 103)])
def test_nixbase32_lengths(n: int, chars: int) -> None:
    assert nixbase32.encoded_len(n) == chars
    assert len(nixbase32.encode(b"\xff" * n)) == chars


def test_nixbase32_known_sha256() -> None:
    # nix-hash --type sha256 --base32 of a file holding "hello\n" (NAR hash) and its hex form
    h = parse_hash("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")
    assert h.hex == "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"


@given(st.binary(max_size=80))
def test_nixbase32_roundtrip(data: bytes) -> None:
    assert nixbase32.decode(nixbase32.encode(data), len(data)) == data


@pytest.mark.parametrize("bad", ["e" * 32, "0" * 31, "0" * 33, "ABCD" * 8, "-" * 32])
def test_nixbase32_rejects(bad: str) -> None:
    with pytest.raises(NixError):
        nixbase32.decode(bad, 20)


def test_nixbase32_rejects_padding_bits() -> None:
    # 52 chars carry 260 bits; the top 4 must be zero for a 32-byte digest
    assert nixbase32.is_valid("1" + "0" * 51, 32)
    assert not nixbase32.is_valid("z" + "0" * 51, 32)


HELLO = b"hello\n"


@pytest.mark.parametrize("algo", sorted(HASH_SIZES))
def test_parse_every_form(algo: str) -> None:
    h = hash_bytes(algo, HELLO)
    assert h.digest == hashlib.new(algo, HELLO).digest()
    forms = [h.to_string("base16"), h.to_string("nix32"), h.to_string("base64"), h.sri]
    for form in forms:
        assert parse_hash(form) == h
        assert parse_hash(form, algo) == h
    for body in (h.hex, h.nix32, h.b64):
        assert parse_hash(body, algo) == h
    assert parse_hash(h.hex.upper(), algo) == h  # Nix accepts upper-case hex


def test_formats() -> None:
    h = hash_bytes("sha256", HELLO)
    assert h.to_string("base16", with_type=False) == h.hex
    assert h.sri == "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="
    assert str(h) == "sha256:" + h.nix32


@pytest.mark.parametrize(("text", "algo"), [
    ("deadbeef", "sha256"),  # wrong length
    ("md5:" + "g" * 32, None),  # bad hex
    ("sha1-AAAA", None),  # SRI with wrong size
    ("sha256-!!!!", None),
    ("foo:abcd", None),  # unknown algorithm
    ("abcd", None),  # no type at all
    ("sha1:" + "0" * 40, "sha256"),  # type disagreement
    ("sha256:" + "e" * 52, None),  # bad nixbase32 char
])
def test_parse_errors(text: str, algo: str | None) -> None:
    with pytest.raises(NixError) as e:
        parse_hash(text, algo)
    assert "\n" not in str(e.value)


def test_hash_checks_size() -> None:
    with pytest.raises(NixError):
        Hash("sha256", b"x")
    with pytest.raises(NixError):
        Hash("sha3", b"x" * 32)


def test_compress_hash() -> None:
    digest = bytes(range(32))
    folded = compress_hash(digest, 20)
    assert len(folded) == 20
    assert folded[0] == 0 ^ 20 and folded[11] == 11 ^ 31 and folded[12] == 12
    assert compress_hash(b"\x01\x02", 4) == b"\x01\x02\x00\x00"
