"""End-to-end builds through Executor: real runc, real inputs (both providers), real store."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.request import BuildRequest, Constraints, EnvVar
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import put_blob, read_blob
from pytest_ocibuild.castore.trees import tree_dict
from pytest_ocibuild.errors import BuildFailed, StoreError

pytestmark = pytest.mark.runc


def sh(busybox: Node, script: str, **kw: object) -> BuildRequest:
    kw.setdefault("outputs", ("build/out",))
    inputs = {"busybox": busybox, **kw.pop("inputs", {})}  # type: ignore[dict-item]
    return BuildRequest(inputs=inputs, command_args=("/inputs/busybox", "sh", "-c", script),
                        **kw)  # type: ignore[arg-type]


def test_outputs_are_ingested_as_trees(executor: Executor, busybox: Node) -> None:
    build = executor.build(sh(busybox, (
        "mkdir -p out/sub/empty && echo hi > out/a && : > out/sub/empty-file && "
        "printf x > out/exe && chmod 755 out/exe && ln -s a out/rel && "
        "ln -s /nowhere/at/all out/dangling && echo single > file"),
        outputs=("build/file", "build/out")))
    file_node, out = build.outputs
    assert isinstance(file_node, FileNode) and not file_node.executable
    assert read_blob(executor.store, file_node.digest) == b"single\n"
    assert isinstance(out, DirectoryNode)
    tree = tree_dict(executor.store, out)
    assert tree["a"][0] == "file" and tree["a"][2] == 3
    assert tree["exe"][0] == "file" and tree["exe"][3] is True
    assert tree["sub/empty-file"][0] == "file" and tree["sub/empty-file"][2] == 0
    assert tree["sub/empty"] == ("dir",)
    assert tree["rel"] == ("symlink", "a")
    assert tree["dangling"] == ("symlink", "/nowhere/at/all")
    assert build.exit_code == 0 and build.duration > 0
    assert "hi" not in Path(build.log_path or "").read_text()


def test_inputs_are_readable_and_not_writable(executor: Executor, busybox: Node) -> None:
    data = FileNode(put_blob(executor.store, b"payload\n"), 8)
    build = executor.build(sh(busybox, (
        "cat /inputs/data > out; "
        "(echo x >> /inputs/data) 2>/dev/null && echo WRITABLE >> out; "
        "rm -f /inputs/data 2>/dev/null; test -e /inputs/data && echo kept >> out; "
        "touch /inputs/new 2>/dev/null && echo CREATED >> out; true"),
        inputs={"data": data}))
    assert read_blob(executor.store, build.outputs[0].digest) == b"payload\nkept\n"


def test_builds_from_the_same_input_twice_agree(executor: Executor, busybox: Node) -> None:
    req = sh(busybox, "/inputs/busybox md5sum /inputs/busybox | cut -c1-32 > out")
    a, b = executor.build(req), executor.build(req)
    assert a.outputs == b.outputs


def test_no_network_without_network_access(executor: Executor, busybox: Node) -> None:
    build = executor.build(sh(busybox, "cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' > out"))
    assert read_blob(executor.store, build.outputs[0].digest) == b"lo\n"
    shared = executor.build(sh(busybox, "cut -d: -f1 /proc/net/dev | tail -n +3 | wc -l > out",
                               constraints=Constraints(network_access=True)))
    host = len(Path("/proc/net/dev").read_text().splitlines()[2:])
    assert int(read_blob(executor.store, shared.outputs[0].digest) or b"") == host


def test_environment_is_exactly_the_request(executor: Executor, busybox: Node) -> None:
    odd = "quote\" back\\slash\ttab\nnewline ü $HOME".encode()
    build = executor.build(sh(busybox, "env | sort > out; printf %s \"$ODD\" > odd",
                              outputs=("build/odd", "build/out"),
                              environment_vars=(EnvVar("ODD", odd), EnvVar("Z", b""))))
    assert read_blob(executor.store, build.outputs[0].digest) == odd
    env = (read_blob(executor.store, build.outputs[1].digest) or b"").decode()
    names = {ln.split("=", 1)[0] for ln in env.splitlines() if "=" in ln}
    # only what we set, plus what the shell exports (PWD, SHLVL, a default PATH) and HOME,
    # which runc fills in from /etc/passwd when the request leaves it unset
    assert {"ODD", "Z"} <= names
    assert names <= {"ODD", "Z", "PWD", "SHLVL", "OLDPWD", "_", "PATH", "HOME"}
    assert "HOME=/build" in env.splitlines()


def test_nonzero_exit_fails_with_code_and_log_tail(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed) as exc:
        executor.build(sh(busybox, "echo to-stdout; echo to-stderr >&2; exit 7"))
    err = exc.value
    assert err.reason == "exit-code" and err.exit_code == 7
    assert "exit code 7" in err.message and "\n" not in err.message
    assert "to-stdout" in err.detail and "to-stderr" in err.detail
    assert err.log_path and "to-stderr" in Path(err.log_path).read_text()


def test_missing_output_is_named(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed, match="'build/out'") as exc:
        executor.build(sh(busybox, "echo nothing"))
    assert exc.value.reason == "missing-output"


def test_broken_symlink_is_a_valid_output(executor: Executor, busybox: Node) -> None:
    build = executor.build(sh(busybox, "ln -s /does/not/exist out"))
    assert build.outputs == (SymlinkNode(b"/does/not/exist"),)


def test_timeout_kills_the_container(executor: Executor, busybox: Node) -> None:
    start = time.monotonic()
    with pytest.raises(BuildFailed) as exc:
        executor.build(sh(busybox, "echo started; sleep 60"), timeout=1)
    assert exc.value.reason == "timeout"
    assert time.monotonic() - start < 20
    assert "started" in exc.value.detail


def test_refscan_hits_and_misses(executor: Executor, busybox: Node) -> None:
    needles = ("aaaaneedle", "bbbbneedle", "ccccneedle")
    build = executor.build(sh(busybox, (
        "mkdir out && echo 'x aaaaneedle y' > out/f && ln -s /x/ccccneedle out/l && "
        "echo clean > other"), outputs=("build/other", "build/out"), refscan_needles=needles))
    assert build.references("build/out") == ("aaaaneedle", "ccccneedle")
    assert build.references("build/other") == ()
    assert build.outputs_needles == ((), (0, 2))


def test_missing_input_blob_is_a_store_error(executor: Executor, busybox: Node) -> None:
    from pytest_ocibuild.castore.digest import Digest

    ghost = FileNode(Digest.of(b"never stored " + os.urandom(8)), 5)
    with pytest.raises((StoreError, BuildFailed)):
        executor.build(sh(busybox, "cat /inputs/ghost > out", inputs={"ghost": ghost}))


def test_keep_bundles(tmp_path: Path, executor: Executor, busybox: Node) -> None:
    executor.keep_bundles = True
    try:
        executor.build(sh(busybox, "echo kept > out"))
    finally:
        executor.keep_bundles = False
    kept = [p for p in executor.bundle_root.iterdir() if p.name.startswith("ocibuild-")]
    assert len(kept) == 1 and (kept[0] / "config.json").is_file()
    from pytest_ocibuild.build.executor import remove_tree

    remove_tree(kept[0])


def test_working_dir_below_a_scratch_path_is_writable(executor: Executor, busybox: Node) -> None:
    build = executor.build(sh(busybox, "echo x > f && pwd > /build/out && cat f >> /build/out",
                              working_dir="build/src/deep"))
    assert read_blob(executor.store, build.outputs[0].digest) == b"/build/src/deep\nx\n"


def test_builds_never_see_each_others_tmp(executor: Executor, busybox: Node) -> None:
    """Roots are reused (see root_pool): what a build leaves in /tmp is gone for the next."""
    script = ("ls -A /tmp > out; ls -ld /tmp | cut -c1-10 >> out; mkdir /tmp/d; "
              "echo x > /tmp/d/f; chmod 500 /tmp/d")
    first, second = (executor.build(sh(busybox, script)) for _ in range(2))
    for build in (first, second):
        assert read_blob(executor.store, build.outputs[0].digest) == b"drwxrwxrwt\n"


def test_ro_path_in_tmp_gets_a_root_of_its_own(executor: Executor, busybox: Node) -> None:
    """A mount point in /tmp would be wiped with /tmp: such a build gets a fresh root."""
    ro = Path(tempfile.mkdtemp(prefix="ocibuild-ro-", dir="/tmp"))
    try:
        ro.chmod(0o755)
        (ro / "f").write_text("host\n")
        build = executor.build(sh(busybox, f"cat {ro}/f > out; ls -A /tmp >> out",
                                  constraints=Constraints(available_ro_paths=(str(ro),))))
        assert read_blob(executor.store, build.outputs[0].digest) == \
            f"host\n{ro.name}\n".encode()
    finally:
        shutil.rmtree(ro)


def _shells(executor: Executor) -> list[Path]:
    return sorted((executor.bundle_root / "shared").glob("bundles-*/bundle-*"))


SCRATCH_PROBE = ("ls -A /build /work > /tmp/ls; stat -c %a /build /work >> /tmp/ls; "
                 "cp /tmp/ls out; mkdir /build/d; echo x > /build/d/f; chmod 500 /build/d; "
                 "echo y > /work/z; chmod 500 /work")


def test_builds_never_see_each_others_scratch(executor: Executor, busybox: Node) -> None:
    """Bundle shells are reused (see bundle.BundleShell): scratch directories come back empty,
    with their modes, whatever the build before left in them."""
    request = sh(busybox, SCRATCH_PROBE, scratch_paths=("build", "work"))
    first, second = (executor.build(request) for _ in range(2))
    for build in (first, second):
        assert read_blob(executor.store, build.outputs[0].digest) == \
            b"/build:\n\n/work:\n700\n755\n"
    assert len(_shells(executor)) == 1  # the second build reused the first one's


def test_a_failed_build_leaves_no_shell_to_reuse(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed):
        executor.build(sh(busybox, "echo left > /build/junk; exit 3"))
    assert _shells(executor) == []
    build = executor.build(sh(busybox, "ls -A /build > /tmp/ls; cp /tmp/ls out"))
    assert read_blob(executor.store, build.outputs[0].digest) == b""
