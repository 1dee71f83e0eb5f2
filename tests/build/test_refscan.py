"""Reference scanning over files, trees and castore nodes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.build.refscan import Matcher, scan_node, scan_path
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nodes import Directory, FileNode
from pytest_ocibuild.errors import NotFound
from tests.build.trees import Exec, Link, put_node, put_tree

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
rng = random.Random(1234)
HASHES = [bytes(rng.choice(NIX32.encode()) for _ in range(32)) for _ in range(300)]
H0, H1, H2, H3 = HASHES[:4]


def materialize(root: Path, spec: dict[str, object]) -> None:
    """Write a plain (writable) tree for scan_path."""
    for rel, value in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, Link):
            os.symlink(value.target, p)
        elif isinstance(value, Exec):
            p.write_bytes(value.data)
            p.chmod(0o755)
        else:
            assert isinstance(value, bytes)
            p.write_bytes(value)


SPEC: dict[str, object] = {
    "bin/prog": Exec(b"\x7fELF..." + b"/nix/store/" + H0 + b"-glibc/lib/ld.so\0..."),
    "share/doc": b"nothing to see",
    "lib/link": Link("/nix/store/" + H1.decode() + "-dep/lib"),
    "empty": b"",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    materialize(tmp_path / "out", SPEC)
    return tmp_path / "out"


def test_hits_in_contents_and_symlink_targets(tree: Path) -> None:
    assert scan_path(tree, [H0, H1, H2]) == {0, 1}


def test_misses(tree: Path) -> None:
    assert scan_path(tree, [H2, H3, b"not-there"]) == set()


def test_file_names_are_not_scanned(tmp_path: Path) -> None:
    materialize(tmp_path, {H0.decode(): b"x"})
    assert scan_path(tmp_path, [H0]) == set()


def test_single_file_and_single_symlink(tree: Path) -> None:
    assert scan_path(tree / "bin/prog", [H1, H0]) == {1}
    assert scan_path(tree / "lib/link", [H1, H0]) == {0}


def test_empty_needles(tree: Path) -> None:
    assert scan_path(tree, []) == set()
    with pytest.raises(ValueError):
        scan_path(tree, [b""])


def test_many_needles_and_duplicates(tree: Path) -> None:
    needles = [*HASHES[2:], H1, H0, H1]
    found = scan_path(tree, needles)
    assert {needles[i] for i in found} == {H0, H1}
    assert found == {len(needles) - 3, len(needles) - 2, len(needles) - 1}


@pytest.mark.parametrize("shift", range(-33, 2))
def test_needle_straddling_a_chunk_boundary(tmp_path: Path, shift: int) -> None:
    chunk = 4096
    f = tmp_path / "f"
    start = chunk + shift  # the needle starts `shift` bytes away from the first boundary
    f.write_bytes(b"a" * start + H2 + b"a" * 5000)
    assert scan_path(f, [H0, H2], chunk_size=chunk) == {1}


def test_overlapping_and_prefix_needles(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"xxabcdyy\x00\x01\xff\xfe")
    # "abc"/"bcd" overlap, "ab" is a prefix of "abc", the last needle is binary (trie path)
    needles = [b"abc", b"bcd", b"ab", b"cdy", b"\x01\xff\xfe", b"zz", b"\x01\xfe"]
    assert scan_path(f, needles, chunk_size=3) == {0, 1, 2, 3, 4}


def test_matcher_strategies_agree() -> None:
    data = bytes(rng.choice(NIX32.encode()) for _ in range(20000)) + H3 + rng.randbytes(5000)
    binary = [data[i : i + 9] for i in range(0, 20000, 997)] + [b"\x00\xffnever"]
    found: set[int] = set()
    Matcher([*HASHES, *binary]).scan(data, found)
    expect = {i for i, n in enumerate([*HASHES, *binary]) if n in data}
    assert found == expect and 3 in found


def test_large_file_needle_at_the_end_memory_bounded(tmp_path: Path) -> None:
    """Scan 200 MiB in a fresh process: peak RSS must stay far below the file size."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        block = b"\x00\x01" * (1 << 19)
        for _ in range(200):
            f.write(block)
        f.write(H3)
    code = (
        "from pathlib import Path\n"
        "from pytest_ocibuild.build.refscan import scan_path\n"
        f"assert scan_path(Path({str(big)!r}), [{H0!r}, {H3!r}]) == {{1}}\n"
        # VmHWM is this process's own peak (ru_maxrss would include the forking parent's)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(hwm.split()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_kib = int(out.stdout)
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib} KiB while scanning a 200 MiB file"


def test_scan_node_matches_scan_path(tree: Path) -> None:
    store = MemoryStore()
    node = put_tree(store, SPEC)  # type: ignore[arg-type]
    needles = [H0, H1, H2, b"absent"]
    assert scan_node(store, node, needles) == scan_path(tree, needles) == {0, 1}
    assert scan_node(store, put_node(store, Link(H2.decode())), needles) == {2}
    assert scan_node(store, put_node(store, b"x" * 10 + H1), needles, chunk_size=7) == {1}
    assert scan_node(store, node, []) == set()


def test_scan_node_missing_objects() -> None:
    store = MemoryStore()
    lost = FileNode(Digest.of(b"lost"), 4)
    directory = Directory({b"f": lost})
    store.put_directory(directory)
    with pytest.raises(NotFound, match=lost.digest.hex):
        scan_node(store, directory.node(), [H0])
    with pytest.raises(NotFound):
        scan_node(store, Directory({b"g": lost}).node(), [H0])
