"""The ocibuild_sandbox fixture's helpers: inputs, trees, reads, logs, references, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.errors import BuildFailed, InvalidRequest
from pytest_ocibuild.plugin.sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("needs_runc")

SCRIPT = """
mkdir -p out/bin out/empty
printf '#!/bin/sh\\n' > out/bin/tool && chmod +x out/bin/tool
printf '\\377\\000' > out/blob
ln -s bin/tool out/link
echo /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x > out/ref
echo "to the log"; echo "also to the log" >&2
printf single > file
"""


@pytest.fixture
def result(ocibuild_sandbox: Sandbox):
    return ocibuild_sandbox.build({
        "inputs": {"busybox": {"path": "/bin/busybox"}},
        "command_args": ["/inputs/busybox", "sh", "-euc", SCRIPT],
        "outputs": ["build/out", "build/file"],  # need not be sorted
        "refscan_needles": ["00bgd045z0d4icpbc2yyz4gx48ak44la", "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0"],
    })


def test_tree_in_case_notation(result) -> None:
    tree = result.tree("build/out")
    assert tree["bin/tool"] == {"contents": "#!/bin/sh\n", "executable": True}
    assert tree["empty"] == {"dir": True}
    assert tree["link"] == {"symlink": "bin/tool"}
    assert tree["blob"]["size"] == 2 and len(tree["blob"]["digest"]) == 64
    assert result.tree("build/file") == {".": "single"}


def test_read_and_nodes(result) -> None:
    assert result.read("build/out", "bin/tool") == b"#!/bin/sh\n"
    assert result.read("build/file") == b"single"
    assert isinstance(result.node("build/out"), DirectoryNode)
    with pytest.raises(IsADirectoryError):
        result.read("build/out", "bin")
    with pytest.raises(FileNotFoundError):
        result.read("build/out", "nope")
    with pytest.raises(OSError, match="symlink"):
        result.read("build/out", "link")
    with pytest.raises(KeyError, match="not an output"):
        result.node("build/other")


def test_log_and_references(result) -> None:
    assert "to the log" in result.log and "also to the log" in result.log
    assert result.references("build/out") == ("00bgd045z0d4icpbc2yyz4gx48ak44la",)
    assert result.references("build/file") == ()


def test_input_helpers(ocibuild_sandbox: Sandbox, tmp_path: Path) -> None:
    assert isinstance(ocibuild_sandbox.file("x", executable=True), FileNode)
    assert isinstance(ocibuild_sandbox.tree({"a": {"symlink": "b"}}), DirectoryNode)
    (tmp_path / "l").symlink_to("target")
    assert ocibuild_sandbox.host(tmp_path / "l") == SymlinkNode(b"target")
    spec = ocibuild_sandbox.spec({"command_args": ["/x"], "environment_vars": {"A": "1"}})
    assert spec["process"]["env"] == ["A=1"]


def test_failures_raise(ocibuild_sandbox: Sandbox) -> None:
    with pytest.raises(BuildFailed) as failed:
        ocibuild_sandbox.build({
            "inputs": {"busybox": {"path": "/bin/busybox"}},
            "command_args": ["/inputs/busybox", "sh", "-c", "echo bye; exit 9"],
        })
    assert (failed.value.reason, failed.value.exit_code) == ("exit-code", 9)
    assert "bye" in failed.value.detail
    with pytest.raises(InvalidRequest, match="outputs"):
        ocibuild_sandbox.request({"command_args": ["/x"], "outputs": ["/abs"]})
