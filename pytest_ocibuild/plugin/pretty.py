"""``json.dumps(value, indent=2, ensure_ascii=False)``, several times faster.

With ``indent`` set, the standard library falls back to its pure-Python encoder; goldens are
serialised once per case per run, so this small recursive writer does it instead. Output is
byte-identical (tests/plugin/test_pretty.py checks it against json.dumps).
"""

from __future__ import annotations

import json
from typing import Any

_STRING = json.encoder.encode_basestring  # type: ignore[attr-defined]
_FLOAT = json.encoder.JSONEncoder().iterencode  # handles nan/inf exactly as json.dumps


def dumps(value: Any, indent: int = 2) -> str:
    """``value`` as indented JSON (dicts keep their order; keys must be strings)."""
    out: list[str] = []
    _write(value, out, "\n", " " * indent)
    return "".join(out)


def _write(value: Any, out: list[str], newline: str, step: str) -> None:
    if isinstance(value, str):
        out.append(_STRING(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append("".join(_FLOAT(value)))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = newline + step
        out.append("{")
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            out.append(inner if first else "," + inner)
            first = False
            out.append(_STRING(key))
            out.append(": ")
            _write(item, out, inner, step)
        out.append(newline + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = newline + step
        out.append("[")
        first = True
        for item in value:
            out.append(inner if first else "," + inner)
            first = False
            _write(item, out, inner, step)
        out.append(newline + "]")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
