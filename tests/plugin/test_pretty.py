"""plugin.pretty.dumps is byte-identical to json.dumps(indent=2, ensure_ascii=False)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ocibuild.plugin.pretty import dumps

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30)


@given(JSON)
def test_same_bytes_as_json_dumps(value: Any) -> None:
    assert dumps(value) == json.dumps(value, indent=2, ensure_ascii=False)


def test_tuples_nesting_and_unicode() -> None:
    value = {"a": (1, [], {}), "é\n\"": [{"x": [None, 1.5, float("inf")]}]}
    assert dumps(value) == json.dumps(value, indent=2, ensure_ascii=False)


def test_refuses_non_string_keys_and_unknown_objects() -> None:
    for bad in ({1: 2}, {"x": object()}):  # json.dumps would turn 1 into "1"; specs never
        with pytest.raises(TypeError):
            dumps(bad)
