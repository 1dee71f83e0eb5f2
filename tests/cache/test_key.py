"""Result keys: the request digest salted with the sandbox version."""

from __future__ import annotations

import pytest

from pytest_ocibuild.build import results
from pytest_ocibuild.build.request import BuildRequest


def test_key_is_stable_and_salted(monkeypatch: pytest.MonkeyPatch) -> None:
    req = BuildRequest(command_args=("/inputs/busybox", "true"))
    key = results.result_key(req)
    assert key == results.result_key(BuildRequest(command_args=("/inputs/busybox", "true")))
    assert key != req.digest.hex and len(key) == 64
    monkeypatch.setattr(results, "SANDBOX_VERSION", results.SANDBOX_VERSION + 1)
    assert results.result_key(req) != key  # a new sandbox never serves old results
