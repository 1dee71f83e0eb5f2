"""A build names its outputs' paths but controls every name below its scratch directories:
nothing on the host may follow a symlink the build made (issue: a build made ocibuild ingest
the host's /etc/shadow through ``ln -s /etc x`` and ``outputs: [build/x/shadow]``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.castore.nodes import DirectoryNode, Node, SymlinkNode
from pytest_ocibuild.castore.trees import tree_dict
from pytest_ocibuild.errors import BuildFailed

pytestmark = pytest.mark.runc

# Root aims at /etc; a normal user (who cannot write there) at a directory of its own.
SECRET_DIR = "/etc" if os.geteuid() == 0 else f"/tmp/ocibuild-test-{os.geteuid()}"
SECRET = f"{SECRET_DIR}/ocibuild-test-secret"


def sh(busybox: Node, script: str, outputs: tuple[str, ...]) -> BuildRequest:
    return BuildRequest(inputs={"busybox": busybox},
                        command_args=("/inputs/busybox", "sh", "-c", script), outputs=outputs)


@pytest.fixture(scope="module")
def secret() -> str:
    """A caller-only host file a hostile build aims at (/etc/shadow's stand-in)."""
    path = Path(SECRET)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text("host secret\n")
    path.chmod(0o600)
    yield "host secret\n"
    path.unlink(missing_ok=True)  # another xdist worker's copy of this fixture may be first


@pytest.mark.parametrize(("script", "output", "through"), [
    (f"ln -s {SECRET_DIR} x", "build/x/ocibuild-test-secret", "x"),
    (f"mkdir -p a; ln -s {SECRET_DIR} a/b", "build/a/b/ocibuild-test-secret", "a/b"),
    ("ln -s / r", f"build/r{SECRET}", "r"),
    ("mkdir d; ln -s ../d l", "build/l/f", "l"),  # even a symlink that stays inside
])
def test_an_output_path_through_a_symlink_is_refused(
    executor: Executor, busybox: Node, secret: str, script: str, output: str, through: str,
) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(sh(busybox, script, (output,)))
    assert failed.value.reason == "output-path-escapes"
    assert repr(through) in failed.value.message and output in failed.value.message
    assert failed.value.log_path


def test_an_output_that_is_a_symlink_stays_a_symlink(
    executor: Executor, busybox: Node, secret: str,
) -> None:
    build = executor.build(sh(busybox, f"ln -s {SECRET} s; mkdir out; ln -s /etc out/e",
                              ("build/out", "build/s")))
    out, link = build.outputs
    assert link == SymlinkNode(SECRET.encode())
    assert isinstance(out, DirectoryNode)
    assert tree_dict(executor.store, out) == {"": ("dir",), "e": ("symlink", "/etc")}


def test_refscan_reads_the_stored_output_not_the_host(
    executor: Executor, busybox: Node, secret: str,
) -> None:
    """Needles are looked for in what was stored: a symlink to a host file counts by its
    target text, never by the host file's contents."""
    request = BuildRequest(
        inputs={"busybox": busybox},
        command_args=("/inputs/busybox", "sh", "-c", f"mkdir out; ln -s {SECRET} out/s"),
        outputs=("build/out",), refscan_needles=("host secret", "ocibuild-test-secret"))
    build = executor.build(request)
    assert build.outputs_needles == ((1,),)


def test_a_path_below_a_file_is_a_missing_output(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(sh(busybox, "echo > f", ("build/f/g",)))
    assert failed.value.reason == "missing-output"


def test_the_cli_says_one_line_and_exports_nothing(tmp_path: Path, secret: str) -> None:
    request = tmp_path / "escape.yaml"
    request.write_text(
        "inputs:\n  busybox: {path: /bin/busybox}\n"
        f"command_args: [/inputs/busybox, sh, -c, 'ln -s {SECRET_DIR} x']\n"
        "outputs: [build/x/ocibuild-test-secret]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest_ocibuild", "build", "--store", str(tmp_path / "store"),
         "--export", str(tmp_path / "out"), str(request)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ocibuild: error: output ")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
