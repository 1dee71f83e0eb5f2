"""Content addressing (HashModuloSink, rewriting) and output checks, without a sandbox."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.memory import MemoryStore
from pytest_ocibuild.castore.nodes import SymlinkNode
from pytest_ocibuild.castore.trees import tree_dict
from pytest_ocibuild.errors import BuildFailed
from pytest_ocibuild.nix.attrs import attrs_sh, registration_text
from pytest_ocibuild.nix.ca import RewritingSink, modulo_hash, name_needles, rewrite_node
from pytest_ocibuild.nix.checks import check_fixed, check_references, sort_outputs
from pytest_ocibuild.nix.derivation import Derivation, Output
from pytest_ocibuild.nix.hashes import Hash, hash_bytes
from tests.nixglue.test_to_request import info

H = "0c5b8vw40dy178xlpddw65q9gf1h2186"
A = "/nix/store/ssg54g77g0k8v1i43cgzbykd9i090r0y-a"
B = "/nix/store/22a6bhzc4mycvg17ag58231zbymdr5sn-b"


@given(st.lists(st.sampled_from([b"x", b"0c5b8", b"vw40dy178xlpddw65q9gf1h2186", H.encode(),
                                 b"\0", b"0c5b8vw40dy178"]), max_size=30),
       st.integers(1, 40))
def test_rewriting_sink_equals_whole_stream_replace(parts: list[bytes], chunk: int) -> None:
    data = b"".join(parts)
    sink = RewritingSink(H.encode(), b"Z" * 32)
    out = b"".join(sink.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    out += sink.flush()
    assert out == data.replace(H.encode(), b"Z" * 32)
    expected, j = [], data.find(H.encode())
    while j != -1:
        expected.append(j)
        j = data.find(H.encode(), j + 32)
    assert sink.matches == expected and sink.pos == len(data)


def test_modulo_hash_is_plain_hash_without_matches_and_positions_otherwise() -> None:
    assert modulo_hash([b"hello\n"], "sha256", H) == hash_bytes("sha256", b"hello\n")
    data = b"ab" + H.encode() + b"cd" + H.encode()
    want = hashlib.sha256(data.replace(H.encode(), b"\0" * 32) + b"|2|36").digest()
    pieces = [data[i:i + 5] for i in range(0, len(data), 5)]
    assert modulo_hash(pieces, "sha256", H) == Hash("sha256", want)


def test_rewrite_node_rewrites_contents_targets_and_names(tmp_path) -> None:
    store = MemoryStore()
    root = tmp_path / "o"
    root.mkdir()
    (root / f"{H}-name").write_text(f"/nix/store/{H}-x and more {H}")
    (root / "exe").write_text("plain")
    (root / "exe").chmod(0o755)
    (root / "link").symlink_to(f"/nix/store/{H}-x/bin")
    node = ingest_path(store, root)
    new = "1" * 32
    out = rewrite_node(store, node, {H.encode(): new.encode()})
    tree = tree_dict(store, out)
    assert set(tree) >= {f"{new}-name", "exe", "link"}
    assert tree["link"] == ("symlink", f"/nix/store/{new}-x/bin")
    assert tree["exe"] == tree_dict(store, node)["exe"]  # untouched, still executable
    assert tree["exe"][3] is True
    from pytest_ocibuild.castore.store import read_blob
    blob = read_blob(store, Digest.from_hex(tree[f"{new}-name"][1]))  # type: ignore[misc]
    assert blob == f"/nix/store/{new}-x and more {new}".encode()
    assert name_needles(store, node, [H, "2" * 32]) == {H}
    assert rewrite_node(store, node, {}) is node
    assert rewrite_node(store, SymlinkNode(b"/x"), {H.encode(): new.encode()}) == \
        SymlinkNode(b"/x")


def test_cycle_names_the_outputs_as_nix_does() -> None:
    assert sort_outputs("/d.drv", {"out": {"dev"}, "dev": set(), "doc": {"out"}}) == [
        "dev", "out", "doc"]
    assert sort_outputs("/d.drv", {"out": {"out"}}) == ["out"]  # self references are fine
    with pytest.raises(BuildFailed) as e:
        sort_outputs("/d.drv", {"out": {"b"}, "b": {"out"}})
    assert e.value.message == ("cycle detected in build of '/d.drv' in the references of "
                               "output 'b' from output 'out'")


def test_hash_mismatch_message_carries_both_hashes() -> None:
    want, got = hash_bytes("sha256", b"a"), hash_bytes("sha256", b"b")
    check_fixed("/d.drv", want, want)
    with pytest.raises(BuildFailed) as e:
        check_fixed("/d.drv", want, got)
    assert e.value.message.startswith("hash mismatch in fixed-output derivation '/d.drv': ")
    assert want.sri in e.value.message and got.sri in e.value.message
    assert e.value.reason == "hash-mismatch"


def _drv(**env: str) -> Derivation:
    return Derivation(outputs={"out": Output(B)}, builder="/b", env={"name": "b", **env})


@pytest.mark.parametrize(("env", "bad"), [
    ({"allowedReferences": ""}, [A]),
    ({"allowedReferences": f"{A}"}, []),
    ({"allowedReferences": "out"}, [A]),
    ({"allowedReferences": A, "self": "1"}, [B]),  # a self reference counts unless allowed
    ({"allowedReferences": f"{A} out", "self": "1"}, []),
    ({"disallowedReferences": A}, [A]),
    ({"allowedRequisites": A}, ["/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-c"]),
    ({"disallowedRequisites": "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-c"},
     ["/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-c"]),
])
def test_reference_constraints(env: dict[str, str], bad: list[str]) -> None:
    c = "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-c"
    infos = {A: info(A, (c,)), c: info(c)}
    out = {"out": info(B, (A, B) if env.pop("self", None) else (A,))}
    if not bad:
        check_references(_drv(**env), "/d.drv", out, infos)
        return
    with pytest.raises(BuildFailed) as e:
        check_references(_drv(**env), "/d.drv", out, infos)
    assert e.value.message == (f"output '{B}' is not allowed to refer to the following "
                               "paths: " + " ".join(bad))


def test_attrs_sh_and_registration_text() -> None:
    assert attrs_sh({"a b": "x", "n": 3, "f": 0.5, "g": 2.0, "t": False, "x": [[1]],
                     "o": {"k": "v", "z": None}, "big": 2**32 + 5}) == (
        "declare big=5\ndeclare g=2\ndeclare n=3\ndeclare -A o=(['k']='v' ['z']='' )\n"
        "declare t=\n")
    c = "/nix/store/8x8l84nmdsklq5fb792y5lpqici6vvxq-c"
    assert registration_text([A, c], {A: info(A, (c,)), c: info(c)}) == \
        f"{A}\n\n1\n{c}\n{c}\n\n0\n"


def test_random_chunking_of_a_large_stream() -> None:
    rng = random.Random(1)
    data = bytearray(rng.randbytes(100_000))
    for pos in (0, 4095, 50_000, 99_968):
        data[pos:pos + 32] = H.encode()
    cuts = sorted(rng.sample(range(1, len(data)), 50))
    pieces = [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert modulo_hash(pieces, "sha1", H) == modulo_hash([bytes(data)], "sha1", H)
