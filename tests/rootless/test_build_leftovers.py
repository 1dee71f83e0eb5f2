"""What a real build leaves in the bundle root: nothing of what it wrote, however hard it made
removal (as root, and as a normal user whose builds run as its subordinate ids, where
removal goes through build/userns.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import read_blob
from pytest_ocibuild.errors import BuildFailed

pytestmark = pytest.mark.runc

# read-only and closed directories, a file nobody may read, a tree below a 0500 directory
HOSTILE_TO_CLEANUP = (
    "mkdir -p out/ro/deep keep; echo x > out/ro/deep/f; chmod 0500 out/ro/deep out/ro; "
    "echo s > keep/secret; chmod 0000 keep/secret; chmod 0100 keep; echo done > out/note")


def _left(root: Path) -> list[str]:
    """Names the hostile build made that are still below ``root`` (pooled bundle shells
    stay, emptied: their directories are the caller's or the build user's, which the
    caller removes through ``userns``)."""
    made = {"ro", "deep", "keep", "secret", "note", "out"}
    return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in (*dirs, *files)
            if n in made]


def _request(busybox: Node, script: str) -> BuildRequest:
    return BuildRequest(inputs={"busybox": busybox},
                        command_args=("/inputs/busybox", "sh", "-c", script),
                        outputs=("build/out/note",))


def test_a_build_leaves_nothing_in_the_bundle_root(executor: Executor, busybox: Node) -> None:
    build = executor.build(_request(busybox, HOSTILE_TO_CLEANUP))
    assert read_blob(executor.store, build.outputs[0].digest) == b"done\n"
    assert _left(executor.bundle_root) == []


def test_a_failed_build_leaves_nothing_in_the_bundle_root(executor: Executor,
                                                          busybox: Node) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(_request(busybox, HOSTILE_TO_CLEANUP + "; exit 3"))
    assert failed.value.reason == "exit-code"
    assert _left(executor.bundle_root) == []
