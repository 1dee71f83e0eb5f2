"""The downstream example from the README (docs/plugin.md), kept runnable.

A project that installs pytest-ocibuild gets these fixtures without any configuration.
"""

from __future__ import annotations

import pytest

from pytest_ocibuild.castore.store import put_blob, read_blob
from pytest_ocibuild.errors import BuildFailed

BUSYBOX = "/bin/busybox"


def test_greeting_is_built(ocibuild_sandbox):
    sandbox = ocibuild_sandbox
    result = sandbox.build({
        "inputs": {
            "busybox": sandbox.host(BUSYBOX),
            "src": sandbox.tree({"name.txt": "world\n"}),
        },
        "command_args": [
            "/inputs/busybox", "sh", "-euc",
            'mkdir out; echo "hello $(cat /inputs/src/name.txt)" > out/greeting',
        ],
        "outputs": ["build/out"],
    })
    assert result.tree("build/out") == {"greeting": "hello world\n"}
    assert result.read("build/out", "greeting") == b"hello world\n"


@pytest.mark.ocibuild(timeout=1)
def test_a_hanging_build_is_killed(ocibuild_sandbox):
    sandbox = ocibuild_sandbox
    with pytest.raises(BuildFailed) as failed:
        sandbox.build({
            "inputs": {"busybox": sandbox.host(BUSYBOX)},
            "command_args": ["/inputs/busybox", "sleep", "60"],
        })
    assert failed.value.reason == "timeout"


def test_the_store_is_shared(castore):
    digest = put_blob(castore, b"shared by every xdist worker")
    assert read_blob(castore, digest) == b"shared by every xdist worker"
