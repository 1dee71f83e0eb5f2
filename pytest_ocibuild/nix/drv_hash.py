"""Derivation hashing (Nix 2.8 ``hashDerivationModulo``) and the paths it determines.

* fixed-output: per output, sha256 of ``fixed:out:<[r:]algo>:<hex>:<output path>``;
* otherwise: sha256 of the ATerm in which every input ``.drv`` path is replaced by the hex modulo
  hash of the output(s) used (inputs with equal hashes merge their output names), optionally with
  output paths and their env vars masked to ``""`` (``mask_outputs``, how output paths are made).

Input derivations are read through a ``Resolver`` (drv path → Derivation); results are memoised in
an optional ``cache`` dict shared between calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.derivation import Derivation, Output, parse_drv, write_drv
from pytest_ocibuild.nix.hashes import HASH_SIZES, Hash
from pytest_ocibuild.nix.store_path import (
    StorePath,
    make_fixed_output_path,
    make_output_path,
    make_text_path,
    output_path_name,
)

Resolver = Callable[[str], Derivation]
DrvType = Literal["input-addressed", "deferred", "fixed", "floating", "impure"]


@dataclass(frozen=True, slots=True)
class DrvHash:
    """Modulo hash per output (hex sha256); ``deferred`` if it depends on a floating/impure drv."""

    hashes: dict[str, str]
    deferred: bool = False


def file_resolver(root: str | Path = "/") -> Resolver:
    """Resolver reading ``<root>/nix/store/...drv`` files."""
    base = Path(root)

    def resolve(drv_path: str) -> Derivation:
        p = base / drv_path.lstrip("/")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise NixError(f"{drv_path}: cannot read derivation ({e.strerror})") from None
        return parse_drv(data, source=drv_path)

    return resolve


def derivation_type(drv: Derivation) -> DrvType:
    """Classify the outputs like Nix ``BasicDerivation::type()``; NixError if inconsistent."""
    kinds: set[str] = set()
    floating_algos: set[str] = set()
    for name, o in drv.outputs.items():
        if o.hash == "impure":
            kinds.add("impure")
        elif o.hash_algo and o.hash:
            kinds.add("fixed")
        elif o.hash_algo:
            kinds.add("floating")
            floating_algos.add(o.hash_algo.removeprefix("r:"))
        elif o.path:
            kinds.add("input-addressed")
        else:
            kinds.add("deferred")
        if kinds == {"fixed"} and name != "out":
            raise NixError('single fixed output must be named "out"')
    if not kinds:
        raise NixError("derivation must have at least one output")
    if len(kinds) > 1:
        raise NixError("can't mix derivation output types")
    if len(floating_algos) > 1:
        raise NixError("all floating outputs must use the same hash type")
    kind = kinds.pop()
    if kind == "fixed" and len(drv.outputs) > 1:
        raise NixError("only one fixed output is allowed")
    return kind  # type: ignore[return-value]


def fixed_output_hash(o: Output) -> tuple[Hash, bool]:
    """The content hash of a fixed output and whether it is recursive (NAR)."""
    recursive = o.hash_algo.startswith("r:")
    algo = o.hash_algo.removeprefix("r:")
    if algo not in HASH_SIZES:
        raise NixError(f"unknown hash algorithm {o.hash_algo!r}")
    try:
        return Hash(algo, bytes.fromhex(o.hash)), recursive
    except ValueError:
        raise NixError(f"invalid base-16 hash {o.hash!r}") from None


def hash_derivation_modulo(drv: Derivation, resolve: Resolver, *, mask_outputs: bool = False,
                           cache: MutableMapping[str, DrvHash] | None = None) -> DrvHash:
    """Nix ``hashDerivationModulo``; fixed outputs use ``drv.name`` for their path like Nix."""
    kind = derivation_type(drv)
    if kind == "fixed":
        hashes = {}
        for oname, o in drv.outputs.items():
            h, rec = fixed_output_hash(o)
            path = make_fixed_output_path(output_path_name(drv.name, oname), h, recursive=rec)
            fp = f"fixed:out:{o.hash_algo}:{o.hash}:{path}"
            hashes[oname] = hashlib.sha256(fp.encode()).hexdigest()
        return DrvHash(hashes)
    if kind == "impure":
        impure = hashlib.sha256(b"impure").hexdigest()
        return DrvHash(dict.fromkeys(drv.outputs, impure), deferred=True)
    deferred = kind == "floating"
    if cache is None:
        cache = {}
    inputs: dict[str, set[str]] = {}
    for drv_path, wanted in drv.input_drvs.items():
        sub = cache.get(drv_path)
        if sub is None:
            sub = hash_derivation_modulo(resolve(drv_path), resolve, cache=cache)
            cache[drv_path] = sub
        deferred = deferred or sub.deferred
        for oname in wanted:
            if oname not in sub.hashes:
                raise NixError(f"{drv_path} has no output {oname!r}")
            inputs.setdefault(sub.hashes[oname], set()).add(oname)
    outputs = drv.outputs
    env = drv.env
    if mask_outputs:
        outputs = {n: o._replace(path="") if not o.hash_algo else o for n, o in outputs.items()}
        env = {k: (b"" if k in drv.outputs else v) for k, v in env.items()}
    modulo = Derivation(outputs=outputs, input_drvs=inputs, input_srcs=drv.input_srcs,
                        system=drv.system, builder=drv.builder, args=drv.args, env=env)
    digest = hashlib.sha256(write_drv(modulo)).hexdigest()
    return DrvHash(dict.fromkeys(drv.outputs, digest), deferred=deferred)


def derivation_path(drv: Derivation, name: str | None = None) -> StorePath:
    """Store path of the ``.drv`` file: text path with references = inputSrcs + inputDrvs."""
    drv_name = drv.name if name is None else name
    refs = [*drv.input_srcs, *drv.input_drvs]
    return make_text_path(drv_name + ".drv", write_drv(drv), refs)


def output_paths(drv: Derivation, resolve: Resolver, name: str | None = None, *,
                 cache: MutableMapping[str, DrvHash] | None = None) -> dict[str, StorePath | None]:
    """The output paths Nix would assign (None for floating/deferred/impure outputs)."""
    drv_name = drv.name if name is None else name
    kind = derivation_type(drv)
    if kind == "fixed":
        out = {}
        for oname, o in drv.outputs.items():
            h, rec = fixed_output_hash(o)
            out[oname] = make_fixed_output_path(output_path_name(drv_name, oname), h,
                                                recursive=rec)
        return out
    if kind in ("floating", "impure"):
        return dict.fromkeys(drv.outputs)
    res = hash_derivation_modulo(drv, resolve, mask_outputs=True, cache=cache)
    if res.deferred:
        return dict.fromkeys(drv.outputs)
    return {o: make_output_path(o, h, drv_name) for o, h in res.hashes.items()}


def check_derivation(drv: Derivation, resolve: Resolver, drv_path: str | None = None, *,
                     cache: MutableMapping[str, DrvHash] | None = None) -> None:
    """Raise NixError unless the recorded output paths (and ``drv_path``) are the computed ones."""
    where = drv_path or "derivation"
    name = drv.name
    if drv_path is not None:
        expected = derivation_path(drv, name)
        if expected.absolute != drv_path:
            raise NixError(f"{drv_path}: contents hash to {expected}, not to this path")
    for oname, path in output_paths(drv, resolve, name, cache=cache).items():
        recorded = drv.outputs[oname].path
        if (path.absolute if path else "") != recorded:
            raise NixError(f"derivation {where!r} has incorrect output {recorded!r}, "
                           f"should be {path.absolute if path else ''!r}")
        env_value = drv.env.get(oname)
        if path is not None and env_value is not None and env_value != path.absolute.encode():
            raise NixError(f"derivation {where!r} has incorrect env {oname}={env_value!r}, "
                           f"should be {path.absolute!r}")
