"""Files Nix 2.8 writes into the build directory: structured attributes and reference graphs.

* ``.attrs.json`` / ``.attrs.sh`` (``__structuredAttrs``; ``ParsedDerivation::
  prepareStructuredAttrs`` and ``writeStructuredAttrsShell``): the attribute set as compact JSON
  with sorted keys and ``outputs`` set to the output paths, and bash ``declare`` lines for the
  attributes bash can represent;
* ``exportReferencesGraph``: the closure of store paths as ``nix-store --register-validity``
  text (no hashes, no deriver), or, with structured attributes, as path-info JSON.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.closure import PathInfo, closure
from pytest_ocibuild.nix.store_path import STORE_DIR

_SH_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def dump_json(value: Any) -> str:
    """nlohmann ``json::dump()``: compact, keys sorted bytewise, UTF-8 unescaped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def shell_escape(s: str) -> str:
    """Nix ``shellEscape``: single quotes, ``'`` written as ``'\\''``."""
    return "'" + s.replace("'", "'\\''") + "'"


def _c_int(n: int) -> int:
    """``static_cast<int>`` of a 64-bit integer (two's complement wrap to 32 bits)."""
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n >= 1 << 31 else n


def _simple(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, str):
        return shell_escape(value)
    if isinstance(value, int):
        return str(_c_int(value))
    if isinstance(value, float):
        try:  # nlohmann get<float>(): the value as a C float
            f = struct.unpack("f", struct.pack("f", value))[0]
        except OverflowError:
            return None
        if math.isfinite(f) and math.ceil(f) == f:
            return str(_c_int(int(value)))
        return None
    if value is None:
        return "''"
    return None


def attrs_sh(attrs: Mapping[str, Any]) -> str:
    """Nix ``writeStructuredAttrsShell``: scalars, lists and attrsets of scalars."""
    out = []
    for key in sorted(attrs, key=lambda k: k.encode()):
        value = attrs[key]
        if not _SH_VAR.fullmatch(key):
            continue
        s = _simple(value)
        if s is not None:
            out.append(f"declare {key}={s}\n")
        elif isinstance(value, list):
            items = [_simple(v) for v in value]
            if all(i is not None for i in items):
                out.append(f"declare -a {key}=({''.join(f'{i} ' for i in items)})\n")
        elif isinstance(value, dict):
            pairs = [(k2, _simple(value[k2])) for k2 in sorted(value, key=lambda k: k.encode())]
            if all(v is not None for _, v in pairs):
                body = "".join(f"[{shell_escape(k2)}]={v} " for k2, v in pairs)
                out.append(f"declare -A {key}=({body})\n")
    return "".join(out)


def _to_store_path(p: str) -> str:
    prefix = STORE_DIR + "/"
    if not p.startswith(prefix) or len(p) <= len(prefix):
        raise NixError(f"'exportReferencesGraph' contains a non-store path '{p}'")
    return prefix + p[len(prefix):].split("/", 1)[0]


def export_closure(paths: list[str], infos: Mapping[str, PathInfo],
                   drv_outputs: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Nix ``exportReferences``: the closure of ``paths``, each of which must be an input,
    with the closure of the outputs of each derivation in it (``drv_outputs``: .drv → its
    output paths, for those built)."""
    for p in paths:
        if p not in infos:
            raise NixError(f"cannot export references of path '{p}' because it is not in the "
                           "input closure of the derivation")
    found = closure(paths, infos)
    outputs = [o for p in sorted(found) if p.endswith(".drv")
               for o in (drv_outputs or {}).get(p, ()) if o in infos]
    return sorted(found | closure(outputs, infos))


def registration_text(paths: list[str], infos: Mapping[str, PathInfo]) -> str:
    """``makeValidityRegistration(paths, showDerivers=false, showHash=false)``."""
    out = []
    for p in paths:
        refs = infos[p].references
        out.append(f"{p}\n\n{len(refs)}\n" + "".join(f"{r}\n" for r in refs))
    return "".join(out)


def path_info_json(paths: list[str], infos: Mapping[str, PathInfo]) -> list[dict[str, Any]]:
    """``pathInfoToJSON(paths, includeImpureInfo=false, showClosureSize=true)``."""
    out = []
    for p in paths:
        info = infos[p]
        d: dict[str, Any] = {"path": p, "narHash": info.nar_hash.to_string("nix32"),
                             "narSize": info.nar_size, "references": list(info.references)}
        if info.ca:
            d["ca"] = info.ca
        d["closureSize"] = sum(infos[q].nar_size for q in closure([p], infos))
        out.append(d)
    return out


def export_graph_files(env: Mapping[str, bytes], infos: Mapping[str, PathInfo],
                       drv_outputs: Mapping[str, Sequence[str]] | None = None,
                       ) -> dict[str, bytes]:
    """Files for a non-structured ``exportReferencesGraph`` (name → registration text)."""
    raw = env.get("exportReferencesGraph")
    if raw is None:
        return {}
    text = raw.decode()
    tokens = text.split()
    if len(tokens) % 2:
        raise NixError(f"odd number of tokens in 'exportReferencesGraph': '{text}'")
    files: dict[str, bytes] = {}
    for name, path in zip(tokens[::2], tokens[1::2], strict=True):
        if not _FILE_NAME.fullmatch(name):
            raise NixError(f"invalid file name '{name}' in 'exportReferencesGraph'")
        sp = _to_store_path(path)
        files[name] = registration_text(export_closure([sp], infos, drv_outputs),
                                        infos).encode()
    return files


def structured_files(attrs: Mapping[str, Any], outputs: Mapping[str, str],
                     infos: Mapping[str, PathInfo],
                     rewrite: Callable[[str], str],
                     drv_outputs: Mapping[str, Sequence[str]] | None = None,
                     ) -> dict[str, bytes]:
    """``.attrs.json`` and ``.attrs.sh`` (``outputs``: output name → path as the builder sees
    it; ``rewrite`` applies Nix's input rewrites, i.e. placeholders → paths)."""
    data = dict(attrs)
    data["outputs"] = {o: rewrite(p) for o, p in outputs.items()}
    graph = data.get("exportReferencesGraph")
    if isinstance(graph, dict):
        for key, value in graph.items():
            items = value if isinstance(value, list) else [value]
            paths = [str(p) for p in items]
            data[key] = path_info_json(export_closure(paths, infos, drv_outputs), infos)
    return {".attrs.json": rewrite(dump_json(data)).encode(),
            ".attrs.sh": rewrite(attrs_sh(data)).encode()}
