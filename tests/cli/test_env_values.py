"""Environment values must be strings: a YAML number or boolean is refused, naming the key."""

from __future__ import annotations

import pytest

from pytest_ocibuild.build.env_values import env_value
from pytest_ocibuild.build.yaml_load import load_yaml
from pytest_ocibuild.errors import InvalidRequest


def test_strings_and_base64_pass() -> None:
    assert env_value("1.50", "D") == b"1.50"
    assert env_value({"base64": "aGk="}, "B") == b"hi"


@pytest.mark.parametrize(("yaml_text", "shown"), [("D: 1.50", "1.5"), ("D: 3", "3"),
                                                   ("D: yes", "true"), ("D: ~", "~")])
def test_unquoted_yaml_scalars_are_refused(yaml_text: str, shown: str) -> None:
    value = load_yaml(yaml_text)["D"]
    with pytest.raises(InvalidRequest) as e:
        env_value(value, "D")
    assert e.value.message.startswith("environment_vars.D: YAML read ")
    assert f"({shown})" in e.value.message and "quote the value" in e.value.message


def test_other_types_are_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"environment_vars.L: expected a string, got list"):
        env_value([1], "L")
