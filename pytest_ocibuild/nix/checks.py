"""Output checks of Nix 2.8 (``registerOutputs``, ``checkOutputs``), with Nix's messages.

* ``sort_outputs``: outputs ordered so that one referring to another comes after it; a cycle
  is Nix's ``cycle detected`` error (same DFS as ``topoSort``, so the same pair is named);
* ``check_fixed``: a fixed output's content hash against the declared one;
* ``check_references``: ``allowedReferences``, ``allowedRequisites``, ``disallowedReferences``,
  ``disallowedRequisites`` (and with structured attrs ``outputChecks.<out>`` with ``maxSize``
  and ``maxClosureSize``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_ocibuild.errors import BuildFailed, NixError
from pytest_ocibuild.nix.closure import PathInfo, closure
from pytest_ocibuild.nix.derivation import Derivation
from pytest_ocibuild.nix.hashes import Hash
from pytest_ocibuild.nix.store_path import STORE_DIR, StorePath
from pytest_ocibuild.nix.to_request import strings_attr


def fail(message: str, reason: str = "output-invalid", detail: str = "") -> BuildFailed:
    return BuildFailed(message, reason=reason, detail=detail)


def sort_outputs(drv_path: str, refs: Mapping[str, set[str]]) -> list[str]:
    """Output names, referenced ones first. ``refs``: output → outputs it refers to."""
    items = sorted(refs)
    order: list[str] = []
    visited: set[str] = set()
    parents: list[str] = []

    def visit(name: str, parent: str | None) -> None:
        if name in parents:
            raise fail(f"cycle detected in build of '{drv_path}' in the references of output "
                       f"'{name}' from output '{parent}'", reason="cycle")
        if name in visited:
            return
        visited.add(name)
        parents.append(name)
        for child in sorted(refs[name]):
            if child != name and child in refs:
                visit(child, name)
        order.append(name)
        parents.pop()

    for name in items:
        visit(name, None)
    return order


def check_fixed(drv_path: str, wanted: Hash, got: Hash) -> None:
    """Nix's hash mismatch error (the specified and the actual hash, SRI)."""
    if wanted != got:
        raise fail(f"hash mismatch in fixed-output derivation '{drv_path}': "
                   f"specified: {wanted.sri} got: {got.sri}",
                   reason="hash-mismatch")


def check_references(drv: Derivation, drv_path: str, outputs: Mapping[str, PathInfo],
                     infos: Mapping[str, PathInfo]) -> None:
    """Apply the derivation's reference constraints to each of ``outputs`` (name → info).

    ``infos`` holds the registration of everything the outputs can refer to.
    """
    by_path = {info.path: info for info in outputs.values()}
    everything = {**infos, **by_path}
    attrs = drv.structured_attrs
    for name, info in outputs.items():
        if attrs is None:
            checks: dict[str, Any] = {k: strings_attr(drv, k) for k in (
                "allowedReferences", "allowedRequisites", "disallowedReferences",
                "disallowedRequisites")}
            _apply(info, checks, outputs, everything, drv_path, ignore_self=True)
            continue
        spec = (attrs.get("outputChecks") or {}).get(name) if isinstance(
            attrs.get("outputChecks"), dict) else None
        if not isinstance(spec, dict):
            continue
        checks = {}
        for key in ("allowedReferences", "allowedRequisites", "disallowedReferences",
                    "disallowedRequisites"):
            value = spec.get(key)
            if value is not None:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise NixError(f"attribute '{key}' of derivation '{drv_path}' must be a "
                                   "list of strings")
                checks[key] = value
        checks["maxSize"] = spec.get("maxSize")
        checks["maxClosureSize"] = spec.get("maxClosureSize")
        _apply(info, checks, outputs, everything, drv_path, ignore_self=False)


def _apply(info: PathInfo, checks: Mapping[str, Any], outputs: Mapping[str, PathInfo],
           infos: Mapping[str, PathInfo], drv_path: str, *, ignore_self: bool) -> None:
    max_size = checks.get("maxSize")
    if max_size is not None and info.nar_size > max_size:
        raise fail(f"path '{info.path}' is too large at {info.nar_size} bytes; limit is "
                   f"{max_size} bytes")
    max_closure = checks.get("maxClosureSize")
    if max_closure is not None:
        size = sum(infos[p].nar_size for p in closure([info.path], infos))
        if size > max_closure:
            raise fail(f"closure of path '{info.path}' is too large at {size} bytes; limit "
                       f"is {max_closure} bytes")

    def check(key: str, allowed: bool, recursive: bool) -> None:
        value = checks.get(key)
        if value is None:
            return
        spec: set[str] = set()
        for item in value:
            if item.startswith(STORE_DIR + "/"):
                try:
                    spec.add(StorePath.from_absolute(item).absolute)
                    continue
                except NixError:
                    pass
            if item in outputs:
                spec.add(outputs[item].path)
            else:
                raise fail(f"derivation contains an illegal reference specifier '{item}'")
        used = closure([info.path], infos) if recursive else set(info.references)
        if recursive and ignore_self:
            used.discard(info.path)
        bad = sorted(p for p in used if (p not in spec) == allowed)
        if bad:
            raise fail(f"output '{info.path}' is not allowed to refer to the following paths:"
                       + "".join(f" {p}" for p in bad))

    check("allowedReferences", True, False)
    check("allowedRequisites", True, True)
    check("disallowedReferences", False, False)
    check("disallowedRequisites", False, True)

