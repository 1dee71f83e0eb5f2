"""quickcheck.surely_valid against jsonschema on the case schemas: it may only say "valid"
where jsonschema agrees, and it must say so for every case in cases/ (else it saves nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ocibuild.plugin.nixcase import NIX_CASE_SCHEMA
from pytest_ocibuild.plugin.quickcheck import surely_valid
from pytest_ocibuild.plugin.schema import CASE_SCHEMA, load_yaml

CASES = sorted((Path(__file__).resolve().parents[2] / "cases").glob("*.yaml"))
SCHEMAS = {"case": CASE_SCHEMA, "nix": NIX_CASE_SCHEMA}


def _bodies() -> list[tuple[str, Any]]:
    out = []
    for path in CASES:
        data, _ = load_yaml(path.read_text())
        for name, body in data.items():
            if not name.startswith("x-"):
                out.append(("nix" if isinstance(body, dict) and "nix" in body else "case", body))
    return out


BODIES = _bodies()


def _keys(schema: Any, found: set[str]) -> set[str]:
    """Every property name the schema mentions (so generated data hits real branches)."""
    if isinstance(schema, dict):
        found.update(schema.get("properties", {}))
        for v in schema.values():
            _keys(v, found)
    elif isinstance(schema, list):
        for v in schema:
            _keys(v, found)
    return found


KEYS = sorted(_keys(SCHEMAS, set()) | {"base64", "zzz"})
SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2)
           | st.sampled_from(["", "a", "/abs", "rel/p", "0" * 64, "exit-code", "timeout", "nix",
                              "materialize", "x y"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
                       max_leaves=25)


def _paths(body: Any) -> list[tuple[Any, ...]]:
    """The path of every value in ``body`` (itself included), parents before children."""
    paths: list[tuple[Any, ...]] = []

    def walk(v: Any, at: tuple[Any, ...]) -> None:
        paths.append(at)
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, sub in items:
            walk(sub, (*at, k))

    walk(body, ())
    return paths


def _replace(v: Any, at: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``v`` with the value at ``at`` replaced by ``new``."""
    if not at:
        return new
    copy = dict(v) if isinstance(v, dict) else list(v)
    copy[at[0]] = _replace(v[at[0]], at[1:], new)
    return copy


def _mutations(body: Any) -> st.SearchStrategy[Any]:
    """``body`` with one value somewhere replaced by generated data."""
    paths = _paths(body)
    leaves = [p for p in paths if not isinstance(_at(body, p), dict | list)] or paths
    return (st.tuples(st.sampled_from(paths), JSONISH) | st.tuples(st.sampled_from(leaves),
            SCALARS)).map(lambda pn: _replace(body, *pn))


def _at(v: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        v = v[k]
    return v


@pytest.mark.parametrize(("kind", "body"), BODIES, ids=[f"{i}" for i in range(len(BODIES))])
def test_every_real_case_is_surely_valid(kind: str, body: Any) -> None:
    assert jsonschema.Draft202012Validator(SCHEMAS[kind]).is_valid(body)
    assert surely_valid(body, SCHEMAS[kind])


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_never_valid_where_jsonschema_says_invalid(data: st.DataObject) -> None:
    kind, body = data.draw(st.sampled_from(BODIES))
    value = data.draw(_mutations(body) | JSONISH)
    if surely_valid(value, SCHEMAS[kind]):
        assert jsonschema.Draft202012Validator(SCHEMAS[kind]).is_valid(value), value


@pytest.mark.parametrize("value", [1.0, True, 0, -1, 1.5])
def test_integer_and_boolean_types_follow_json_schema(value: Any) -> None:
    schema = {"type": "integer", "minimum": 0}
    assert surely_valid(value, schema) == jsonschema.Draft202012Validator(schema).is_valid(value)


def test_unknown_keywords_mean_unsure() -> None:
    assert not surely_valid("x", {"type": "string", "format": "email"})


LEAF_VALUES = [None, True, False, 0, -1, 2, 0.5, -0.5, 1.0, "", "a", "/abs", "rel/p", "0" * 64,
               "A" * 64, "exit-code", "timeout", "nix", "fuse", "materialize", "1x", [], {},
               ["a"], {"base64": "aGk="}, {"zzz": 1}]


@pytest.mark.parametrize("index", range(len(BODIES)))
def test_every_single_change_of_every_case(index: int) -> None:
    """Exhaustively: each value in each real case replaced by each of LEAF_VALUES."""
    kind, body = BODIES[index]
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind])
    paths = _paths(body)
    for path in paths:
        for new in LEAF_VALUES:
            changed = _replace(body, path, new)
            if surely_valid(changed, SCHEMAS[kind]):
                assert validator.is_valid(changed), (path, new)

