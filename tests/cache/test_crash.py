"""SIGKILL a build and its reaper at many moments; the next start cleans up and loses nothing
committed.

Each iteration runs a build in a child process (real runc, a ~50 MB output so that ingest
takes a while) and kills it after a delay stepping through the measured length of a whole
build: before runc, mid-run, mid-ingest and around the commit. After every kill, ``purge``
(what the next start does) must leave no container, no mount, no bundle and no staging file,
the store must verify clean, and a result committed before the kills must still be intact.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pytest_ocibuild.build.gc import verify
from pytest_ocibuild.build.lifecycle import mounts_under, purge
from pytest_ocibuild.build.request import BuildRequest, EnvVar
from pytest_ocibuild.build.request_io import dump_request
from pytest_ocibuild.build.results import ResultStore, result_key
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from tests.cache.conftest import REPO, child_cmd, sh
from tests.cache.test_lifecycle import kill_client_and_reaper

pytestmark = pytest.mark.runc

BIG = ("mkdir out; i=0; while [ $i -lt 200 ]; do "
       "head -c 262144 /dev/urandom > out/f$i; i=$((i+1)); done")


def request(busybox: Node, nonce: str) -> BuildRequest:
    return sh(busybox, BIG, environment_vars=(EnvVar("NONCE", nonce.encode()),))


def assert_clean(root: Path, work: Path, runtime: RuncRuntime) -> None:
    assert runtime.list() == [], "containers left after purge"
    assert mounts_under(work) == [], "mounts left after purge"
    assert list((work / "bundles").glob("ocibuild-*")) == [], "bundles left after purge"
    assert LocalStore(root).staging_files() == [], "staging files left after purge"
    report = verify(root)
    assert report.ok, (report.corrupt, report.missing)


@pytest.mark.parametrize(("provider", "kills"), [("materialize", 16), ("fuse", 8)])
def test_sigkill_at_many_points(tmp_path: Path, root: Path, busybox: Node, provider: str,
                                kills: int) -> None:
    work = tmp_path / "work"
    runtime = RuncRuntime("runc", state_dir=work / "runc-state")
    args = [] if provider == "materialize" else [provider]

    # One undisturbed build: committed before any kill, and the length of a whole build.
    committed = tmp_path / "committed.json"
    dump_request(request(busybox, "committed"), committed)
    start = time.monotonic()
    child = subprocess.run(child_cmd(root, work, committed, *args), capture_output=True,
                           timeout=300, cwd=REPO)
    total = time.monotonic() - start
    assert child.returncode == 0, child.stderr
    key = result_key(request(busybox, "committed"))
    assert ResultStore(root).get(key) is not None

    outcomes = []
    for i in range(kills):
        req = tmp_path / f"r{i}.json"
        dump_request(request(busybox, f"kill-{provider}-{i}"), req)
        proc = subprocess.Popen(child_cmd(root, work, req, *args), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(total * (0.1 + i / kills))  # from start-up to just past the commit
        kill_client_and_reaper(proc)  # alone, its reaper cleans up (tests/hostile)
        left = {"containers": len(runtime.list()), "mounts": len(mounts_under(work)),
                "staging": len(LocalStore(root).staging_files())}
        purge(store_root=root, bundle_root=work / "bundles", runtime=runtime)
        assert_clean(root, work, runtime)
        record = ResultStore(root).get(result_key(request(busybox, f"kill-{provider}-{i}")))
        outcomes.append((left, record is not None))

    print(f"{provider}: whole build {total:.2f}s; after each kill: {outcomes}")
    assert any(not done for _, done in outcomes), "every build finished before its kill"
    assert any(left["containers"] or left["mounts"] for left, _ in outcomes), outcomes
    # what was committed before the kills is intact, and the store still builds
    results = ResultStore(root)
    record = results.get(key)
    assert record is not None and record.ok
    again = subprocess.run(child_cmd(root, work, committed, *args), capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0 and '"cached": true' in again.stdout, again.stderr
