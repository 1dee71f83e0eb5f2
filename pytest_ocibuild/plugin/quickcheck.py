"""A fast yes/no check of an instance against the case schemas, so jsonschema (slow to
import) is loaded only when a case is invalid, to say why.

It understands exactly the keywords the case schemas use (``type``, ``properties``,
``additionalProperties``, ``required``, ``minProperties``, ``items``, ``minItems``,
``minLength``, ``pattern``, ``enum``, ``const``, ``minimum``, ``exclusiveMinimum``, ``anyOf``)
with JSON Schema's meaning; any other keyword makes it answer "not sure" (False), which only
costs the jsonschema import. tests/plugin/test_quickcheck.py compares it with jsonschema.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

_KNOWN = frozenset({
    "type", "properties", "additionalProperties", "required", "minProperties", "items",
    "minItems", "minLength", "pattern", "enum", "const", "minimum", "exclusiveMinimum", "anyOf",
})


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float)
    if kind == "null":
        return value is None
    return False


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def surely_valid(value: Any, schema: dict[str, Any] | bool) -> bool:
    """True only if ``value`` satisfies ``schema``; False if it does not, or if unsure."""
    if schema is True:
        return True
    if schema is False or not isinstance(schema, dict) or not _KNOWN.issuperset(schema):
        return False
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        return False
    if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
        return False
    if "const" in schema and not _equal(value, schema["const"]):
        return False
    if "anyOf" in schema and not any(surely_valid(value, s) for s in schema["anyOf"]):
        return False
    if isinstance(value, dict):
        return _object(value, schema)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return False
        items = schema.get("items", True)
        return all(surely_valid(v, items) for v in value)
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return False
        return "pattern" not in schema or _regex(schema["pattern"]).search(value) is not None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return False
    return True


def _object(value: dict[str, Any], schema: dict[str, Any]) -> bool:
    if len(value) < schema.get("minProperties", 0):
        return False
    if any(k not in value for k in schema.get("required", ())):
        return False
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = properties.get(key, extra) if isinstance(key, str) else False
        if not surely_valid(item, sub):
            return False
    return True
