"""Who a build is on the host (build/ids.py): never a human's uid, never shared.

As root, each build slot runs as its own unused id (far above any account, as Nix's
auto-allocated build users) and container root is an unused id too; as a normal user, the
build runs as the user's subordinate ids. Inside, the build is always uid 1000 / gid 100.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.ids import ID_START, SUBUID_PATH, is_build_id, subordinate_range
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node

pytestmark = pytest.mark.runc
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def kept(tmp_path: Path, shared_store: LocalStore) -> Iterator[Executor]:
    """Two slots, bundles kept so the test can look at what the builds left."""
    root = tmp_path / "bundles"
    runtime = RuncRuntime("runc", state_dir=tmp_path / "runc-state")
    ex = Executor(shared_store, inputs=open_input_provider("materialize"), runtime=runtime,
                  bundle_root=root, keep_bundles=True, max_parallel=2)
    yield ex
    runtime.purge("")
    for p in root.glob("ocibuild-*"):
        remove_tree(p)


def _owner_of_leftover(root: Path, name: str) -> tuple[int, int]:
    """The host ids the build that left ``name`` ran as: the file's owner as root; as a
    normal user, whose builds' files are given back to it after the build (build/userns.py),
    the build user's ids in that kept bundle's config.json."""
    [found] = [p for p in root.glob(f"ocibuild-*/scratch/*/{name}")]
    st = os.lstat(found)
    if AS_ROOT:
        return st.st_uid, st.st_gid
    linux = json.loads((found.parents[2] / "config.json").read_text())["linux"]
    ids = tuple(next(m["hostID"] for m in linux[k] if m["containerID"] == c)
                for k, c in (("uidMappings", 1000), ("gidMappings", 100)))
    assert (st.st_uid, st.st_gid) in (ids, (os.geteuid(), os.getegid())), (found, st, ids)
    return ids[0], ids[1]


def test_concurrent_builds_run_as_distinct_unused_ids(kept: Executor, busybox: Node) -> None:
    barrier = threading.Barrier(2)
    logs: dict[str, str] = {}

    def build(name: str) -> None:
        barrier.wait()
        b = kept.build(BuildRequest(
            inputs={"busybox": busybox},
            command_args=("/inputs/busybox", "sh", "-c",
                          f"/inputs/busybox id; : > {name}; /inputs/busybox sleep 1")))
        logs[name] = Path(b.log_path or "").read_text()

    threads = [threading.Thread(target=build, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("one", "two"):
        assert "uid=1000" in logs[name] and "gid=100" in logs[name], logs[name]
    owners = {n: _owner_of_leftover(kept.bundle_root, n) for n in ("one", "two")}
    assert owners["one"] != owners["two"], owners  # one host uid per concurrent build
    humans = {p.pw_uid for p in pwd.getpwall()}
    for uid, gid in owners.values():
        assert uid not in humans and gid not in humans, owners
        if AS_ROOT:
            assert uid >= ID_START and is_build_id(uid) and is_build_id(gid), owners
        else:
            user = pwd.getpwuid(os.geteuid()).pw_name
            sub = subordinate_range(SUBUID_PATH, {user, str(os.geteuid())})
            assert sub is not None and sub[0] <= uid < sub[0] + sub[1], (owners, sub)


@pytest.mark.skipif(not AS_ROOT, reason="checks root's build dirs against another account")
def test_another_account_cannot_write_into_a_running_build(
    kept: Executor, busybox: Node
) -> None:
    """The issue's check: ``setpriv --reuid=1000`` writing into a running root build."""
    started = threading.Event()
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def intrude() -> None:
        started.wait(30)
        scratch = next(kept.bundle_root.glob("ocibuild-*/scratch/*"))
        result["run"] = subprocess.run(
            ["setpriv", "--reuid=1000", "--regid=100", "--clear-groups", "sh", "-c",
             f"echo intruder > {scratch}/planted"], capture_output=True, text=True)

    t = threading.Thread(target=intrude)
    t.start()
    try:
        request = BuildRequest(
            inputs={"busybox": busybox},
            command_args=("/inputs/busybox", "sh", "-c",
                          "/inputs/busybox sleep 1.5; /inputs/busybox ls -A; "
                          "/inputs/busybox mkdir -p out"),
            outputs=("build/out",))
        threading.Timer(0.5, started.set).start()
        kept.build(request)
    finally:
        started.set()
        t.join()
    ran = result["run"]
    assert ran.returncode != 0 and "Permission denied" in ran.stderr, ran
    assert not list(kept.bundle_root.glob("ocibuild-*/scratch/*/planted"))
