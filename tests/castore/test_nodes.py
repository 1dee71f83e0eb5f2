"""Node encoding against tvix's vectors, and Directory.decode's strictness."""

from __future__ import annotations

import blake3
import pytest

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import (
    Directory,
    DirectoryNode,
    FileNode,
    SymlinkNode,
    validate_name,
)

EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
KEEP = "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"


def test_blake3_hello_world() -> None:
    assert Digest.of(b"Hello World!").hex == (
        "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    )


def test_empty_directory_vector() -> None:
    assert Directory().encode() == b""
    assert Directory().digest.hex == EMPTY
    assert Directory().size == 0


def test_keep_directory_vector() -> None:
    d = Directory({b".keep": FileNode(Digest.of(b""), 0)})
    data = d.encode()
    assert len(data) == 43
    assert data.hex().startswith("12290a052e6b656570")
    assert data[-32:] == blake3.blake3(b"").digest()
    assert d.digest.hex == KEEP
    assert Directory.decode(data) == d


def test_size_follows_tvix_rust_code() -> None:
    keep = Directory({b".keep": FileNode(Digest.of(b""), 0)})
    outer = Directory({b"k": keep.node(), b"l": SymlinkNode(b"k")})
    assert keep.size == 2
    assert outer.size == 2 * 2 + 2


def test_order_directories_files_symlinks() -> None:
    d = Directory(
        {
            b"a-link": SymlinkNode(b"t"),
            b"b-file": FileNode(Digest.of(b"x"), 1),
            b"c-dir": Directory().node(),
        }
    )
    data = d.encode()
    assert data[0] == 0x0A  # field 1: directories first even though "c-dir" sorts last
    assert data.index(b"c-dir") < data.index(b"b-file") < data.index(b"a-link")
    assert Directory.decode(data) == d


def _field(num: int, payload: bytes) -> bytes:
    return bytes([num << 3 | 2, len(payload)]) + payload


def _file(name: bytes, extra: bytes = b"") -> bytes:
    return _field(2, _field(1, name) + _field(2, Digest.of(b"").raw) + extra)


def test_decode_rejects_unsorted() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        Directory.decode(_file(b"b") + _file(b"a"))


def test_decode_rejects_duplicates() -> None:
    with pytest.raises(ValueError):
        Directory.decode(_file(b"a") + _file(b"a"))
    dir_a = _field(1, _field(1, b"a") + _field(2, Digest.of(b"").raw))
    with pytest.raises(ValueError, match="duplicate"):
        Directory.decode(dir_a + _file(b"a"))


def test_decode_rejects_non_canonical() -> None:
    with pytest.raises(ValueError, match="canonical"):
        Directory.decode(_file(b"a", b"\x18\x00"))  # explicit zero size
    dir_b = _field(1, _field(1, b"b") + _field(2, Digest.of(b"").raw))
    with pytest.raises(ValueError, match="canonical"):
        Directory.decode(_file(b"a") + dir_b)  # files before directories


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0b", b"x" * 256])
def test_invalid_names(name: bytes) -> None:
    with pytest.raises(ValueError):
        validate_name(name)
    with pytest.raises(ValueError):
        Directory({name: SymlinkNode(b"t")})
    if 0 < len(name) < 128:
        with pytest.raises(ValueError):
            Directory.decode(_file(name))


def test_valid_names() -> None:
    for name in (b"...", b"a" * 255, b"\xff\xfe", b"new\nline", b" "):
        assert validate_name(name) == name
    with pytest.raises(ValueError):
        validate_name("str")  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [b"", b"a\0b", b"x" * 4096])
def test_invalid_symlink_targets(target: bytes) -> None:
    with pytest.raises(ValueError):
        SymlinkNode(target)


def test_decode_rejects_bad_digest_length() -> None:
    bad = _field(2, _field(1, b"a") + _field(2, b"short"))
    with pytest.raises(ValueError, match="digest"):
        Directory.decode(bad)


def test_roundtrip_directory_node_size() -> None:
    d = Directory({b"sub": DirectoryNode(Digest.of(b"q"), 300)})  # multi-byte varint
    assert Directory.decode(d.encode()) == d
    assert d.size == 302
