"""Turning a finished build's outputs into registered store paths (Nix ``registerOutputs``).

Given the castore node of each output (as built at its scratch path) and the hash parts found
in it, compute for each output, in dependency order: its final path (known, or for floating
content-addressed outputs the fixed-output path of its self-reference-masked content, after
which the temporary hash part is rewritten), its references as ``nix-store -q --references``
reports them, its NAR hash and size and its content address; then check fixed output hashes
and the reference constraints.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytest_ocibuild.castore.nar import nar_hash
from pytest_ocibuild.castore.nodes import FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.ca import content_chunks, modulo_hash, rewrite_node
from pytest_ocibuild.nix.checks import check_fixed, check_references, fail, sort_outputs
from pytest_ocibuild.nix.closure import PathInfo
from pytest_ocibuild.nix.derivation import Derivation
from pytest_ocibuild.nix.drv_hash import derivation_type, fixed_output_hash
from pytest_ocibuild.nix.hashes import Hash
from pytest_ocibuild.nix.store_path import (
    StorePath,
    make_fixed_output_path,
    output_path_name,
)


def chroot_path(drv_path: str, path: str) -> str:
    """Where Nix shows a path of the build in its error messages (``<drv>.chroot<path>``)."""
    return f"{drv_path}.chroot{path}"


def register_outputs(
    store: Store,
    drv: Derivation,
    drv_path: str,
    scratch: Mapping[str, str],
    nodes: Mapping[str, Node],
    found: Mapping[str, set[str]],
    inputs: Mapping[str, PathInfo],
) -> dict[str, PathInfo]:
    """PathInfo per output. ``scratch``: output → path it was built at; ``nodes``: output →
    castore node; ``found``: output → hash parts found in it; ``inputs``: the input closure."""
    by_hash = {StorePath.from_absolute(p).hash_part: p for p in (*inputs, *scratch.values())}
    refs = {o: {by_hash[h] for h in found[o] if h in by_hash} for o in scratch}
    scratch_to_out = {p: o for o, p in scratch.items()}
    deps = {o: {scratch_to_out[r] for r in refs[o] if r in scratch_to_out} for o in scratch}
    kind = derivation_type(drv)
    rewrites: dict[bytes, bytes] = {}  # scratch hash part → final hash part
    result: dict[str, PathInfo] = {}
    for o in sort_outputs(drv_path, deps):
        sp = StorePath.from_absolute(scratch[o])
        node = nodes[o]
        out = drv.outputs[o]
        others = sorted(_rewrite_ref(r, rewrites) for r in refs[o] if r != sp.absolute)
        self_ref = sp.absolute in refs[o]
        ca = ""
        if kind in ("fixed", "floating", "impure"):
            recursive = out.hash_algo.startswith("r:")
            algo = out.hash_algo.removeprefix("r:")
            if not recursive and not (isinstance(node, FileNode) and not node.executable):
                raise fail(f"output path '{chroot_path(drv_path, sp.absolute)}' should be a "
                           "non-executable regular file since recursive hashing is not enabled "
                           "(outputHashMode=flat)")
            node = rewrite_node(store, node, rewrites)
            got = modulo_hash(content_chunks(store, node, recursive), algo, sp.hash_part)
            if kind == "fixed":
                wanted, _ = fixed_output_hash(out)
                check_fixed(drv_path, wanted, got)
                if others or self_ref:
                    n = len(others) + self_ref
                    first = sorted([*others, *([sp.absolute] if self_ref else [])])[0]
                    raise fail(f"fixed-output derivations must not reference store paths: "
                               f"'{drv_path}' references {n} distinct paths, e.g. '{first}'")
            try:
                final = make_fixed_output_path(output_path_name(drv.name, o), got,
                                               recursive=recursive, references=others,
                                               self_ref=self_ref)
            except NixError as e:
                raise fail(str(e)) from None
            if final != sp:
                node = rewrite_node(store, node, {sp.hash_part.encode(): final.hash_part.encode()})
                rewrites[sp.hash_part.encode()] = final.hash_part.encode()
            ca = f"fixed:{'r:' if recursive else ''}{got.to_string('nix32')}"
        else:
            final = sp
            node = rewrite_node(store, node, rewrites)
        digest, size = nar_hash(store, node)
        references = sorted({*others, *([final.absolute] if self_ref else [])})
        result[o] = PathInfo(path=final.absolute, node=node, nar_hash=Hash("sha256", digest),
                             nar_size=size, references=tuple(references), ca=ca)
    check_references(drv, drv_path, result, inputs)
    return result


def _rewrite_ref(path: str, rewrites: Mapping[bytes, bytes]) -> str:
    sp = StorePath.from_absolute(path)
    new = rewrites.get(sp.hash_part.encode())
    return path if new is None else StorePath(new.decode(), sp.name).absolute
