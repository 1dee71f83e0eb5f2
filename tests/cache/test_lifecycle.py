"""Purge after crashes, gc, df and verify, on real stores, containers and processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ocibuild.build.atomic import file_lock
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.gc import df, gc, verify
from pytest_ocibuild.build.lifecycle import mounts_under, purge
from pytest_ocibuild.build.request_io import dump_request
from pytest_ocibuild.build.results import ResultStore, result_key
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import put_blob
from tests.cache.conftest import REPO, child_cmd, sh


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def start_child(root: Path, work: Path, req: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(child_cmd(root, work, req), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_client_and_reaper(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGKILL a build client and its reaper (stopped first, so that it cleans nothing up):
    what a kill of both leaves (e.g. of a whole session) is for ``purge``."""
    reapers = []
    for entry in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"reaper.py") for c in cmd) and str(proc.pid).encode() in cmd:
            reapers.append(int(entry))
            os.kill(int(entry), signal.SIGSTOP)
    proc.kill()
    proc.wait()
    for pid in reapers:
        os.kill(pid, signal.SIGKILL)


def wait_for_containers(runtime: RuncRuntime, n: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = runtime.list()
        if len(ids) >= n:
            return ids
        time.sleep(0.05)
    raise AssertionError(f"expected {n} containers, have {runtime.list()}")


@pytest.mark.runc
def test_purge_removes_dead_runs_and_keeps_live_ones(tmp_path: Path, root: Path,
                                                     busybox: Node) -> None:
    work = tmp_path / "work"  # one bundle root and runc state dir for both children
    runtime = RuncRuntime("runc", state_dir=work / "runc-state")
    reqs = []
    for name in ("doomed", "alive"):
        reqs.append(tmp_path / f"{name}.json")
        dump_request(sh(busybox, f"echo {name}; sleep 60"), reqs[-1])
    doomed = start_child(root, work, reqs[0])
    alive = start_child(root, work, reqs[1])
    try:
        wait_for_containers(runtime, 2)
        kill_client_and_reaper(doomed)  # its reaper would clean up (see tests/hostile)
        if os.geteuid() == 0:  # materialized inputs are a read-only bind mount as root
            assert any(f"-{doomed.pid}-" in m for m in mounts_under(work / "bundles"))
        report = purge(store_root=root, bundle_root=work / "bundles", runtime=runtime)
        left = runtime.list()
        assert [c for c in report.containers if f"-{doomed.pid}-" in c]
        assert len(left) == 1 and left[0].startswith(f"ocibuild-{alive.pid}-")
        assert not [m for m in mounts_under(work / "bundles") if f"-{doomed.pid}-" in m]
        pools = sorted(p.name for p in (work / "bundles" / "shared").glob("bundles-*"))
        assert len(pools) == 1 and pools[0].startswith(f"bundles-{alive.pid}-")
        assert not [p for p in (work / "bundles" / "shared").iterdir()
                    if f"-{doomed.pid}-" in p.name]
    finally:
        alive.kill()
        alive.wait()
    purge(store_root=root, bundle_root=work / "bundles", runtime=runtime)
    assert runtime.list() == []
    assert mounts_under(work / "bundles") == []
    assert list((work / "bundles").glob("ocibuild-*")) == []
    assert list((work / "bundles" / "shared").glob("bundles-*")) == []


def test_purge_staging_and_locks(tmp_path: Path) -> None:
    LocalStore(tmp_path)
    tmp = tmp_path / "tmp"
    dead, mine = dead_pid(), os.getpid()
    (tmp / f"blob.{dead}-abcd.0").write_bytes(b"half a blob")
    (tmp / f"json.{dead}-abcd.3").write_bytes(b"half a record")
    (tmp / f"blob.{mine}-abcd.1").write_bytes(b"in flight")
    old = tmp / f"blob.{mine}-abcd.2"
    old.write_bytes(b"ancient")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "stale.lock").write_bytes(b"")
    with file_lock(locks / "held.lock"):
        report = purge(store_root=tmp_path)
        assert (locks / "held.lock").exists()
    assert sorted(report.staging) == sorted([f"blob.{dead}-abcd.0", f"json.{dead}-abcd.3",
                                             old.name])
    assert os.listdir(tmp) == [f"blob.{mine}-abcd.1"]
    assert report.locks == ["stale.lock"]


def test_purge_cache_leftovers(tmp_path: Path) -> None:
    from pytest_ocibuild.build.caches import CacheStore

    caches = CacheStore(tmp_path)
    with caches.use("c") as clone:
        clone.commit()
    base = tmp_path / "caches" / "c"
    (base / "clones" / f"{dead_pid()}-beef").mkdir()
    (base / "snap-7").mkdir()  # a commit that crashed before the swap
    report = purge(store_root=tmp_path)
    assert len(report.caches) == 2
    assert sorted(p.name for p in base.iterdir()) == ["clones", "current", "snap-1"]


@pytest.mark.runc
def test_gc_keeps_roots_and_recent_results(executor: Executor, busybox: Node,
                                           root: Path) -> None:
    old = executor.build(sh(busybox, "mkdir out; echo old > out/f"))
    new = executor.build(sh(busybox, "mkdir out; echo new > out/f"))
    results = ResultStore(root)
    os.utime(results.record_path(result_key(old.request)), (time.time() - 10 * 86400,) * 2)
    stray = put_blob(executor.store, b"nobody refers to me")
    report = gc(root, max_age=86400, grace=0, roots=[busybox])
    assert report.records_removed == 1 and report.records_kept == 1
    store = LocalStore(root)
    assert store.has_blob(busybox.digest)  # type: ignore[union-attr]
    assert not store.has_blob(stray)
    new_dir, old_dir = new.outputs[0], old.outputs[0]
    assert isinstance(new_dir, DirectoryNode) and isinstance(old_dir, DirectoryNode)
    assert store.get_directory(new_dir.digest) is not None
    assert store.get_directory(old_dir.digest) is None
    assert results.get(result_key(old.request)) is None
    assert not results.log_path(result_key(old.request)).exists()
    assert executor.build(new.request).cached
    assert verify(root).ok


@pytest.mark.runc
def test_gc_size_budget_keeps_most_recently_used(executor: Executor, busybox: Node,
                                                 root: Path) -> None:
    builds = [executor.build(sh(busybox, f"head -c 100000 /dev/urandom > out; : {i}"))
              for i in range(3)]
    results = ResultStore(root)
    for age, b in zip((30, 20, 10), builds, strict=True):
        os.utime(results.record_path(result_key(b.request)), (time.time() - age,) * 2)
    gc(root, max_size=250_000, grace=0)
    kept = [results.get(result_key(b.request)) is not None for b in builds]
    assert kept == [False, True, True]
    assert not LocalStore(root).has_blob(busybox.digest)  # type: ignore[union-attr]
    assert gc(root, max_size=0, grace=0).records_removed == 2


def test_gc_grace_spares_fresh_objects(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    fresh = put_blob(store, b"just ingested by a running build")
    gc(tmp_path)  # default grace
    assert store.has_blob(fresh)
    gc(tmp_path, grace=0)
    assert not store.has_blob(fresh)


def test_verify_finds_a_flipped_byte(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    good = put_blob(store, b"fine")
    bad = put_blob(store, b"will be flipped")
    twin = store.blob_path(good, executable=True)
    assert twin is not None
    path = store.blob_path(bad)
    assert path is not None
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify(tmp_path)
    assert report.checked == 3
    assert len(report.corrupt) == 1 and bad.hex in report.corrupt[0]
    cli = subprocess.run([sys.executable, "-m", "pytest_ocibuild", "store", "verify",
                          "--store", str(tmp_path)], capture_output=True, text=True)
    assert cli.returncode == 1 and bad.hex in cli.stdout and good.hex not in cli.stdout


def test_verify_reports_results_missing_objects(tmp_path: Path) -> None:
    from pytest_ocibuild.build.results import Record

    store = LocalStore(tmp_path)
    node = FileNode(put_blob(store, b"output"), 6)
    ResultStore(tmp_path).put(Record(key="12" * 32, ok=True, outputs=(("build/out", node),),
                                     needles=((),)))
    assert verify(tmp_path).ok
    os.unlink(store.blob_path(node.digest))  # type: ignore[arg-type]
    report = verify(tmp_path)
    assert report.corrupt == [] and len(report.missing) == 1 and node.digest.hex in \
        report.missing[0]


def test_df_and_cli_store_commands(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    put_blob(store, b"x" * 1000)
    usage = df(tmp_path)
    assert usage["blobs"] == {"count": 1, "bytes": 1000}
    assert usage["total"]["bytes"] >= 1000

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest_ocibuild", *args, "--store",
                               str(tmp_path)], capture_output=True, text=True)

    assert json.loads(run("store", "df", "--json").stdout)["blobs"]["count"] == 1
    gced = run("store", "gc", "--grace", "0", "--max-size", "1M", "--json")
    assert gced.returncode == 0 and json.loads(gced.stdout)["blobs_removed"] == 1
    assert run("store", "verify").returncode == 0
    assert run("cache", "ls").stdout == ""
    assert run("cache", "rm", "nope").returncode == 2
    assert run("store", "purge", "--json").returncode == 0


@pytest.mark.parametrize("text,value", [("1024", 1024), ("10K", 10240), ("1.5GiB", 3 << 29),
                                        ("2m", 2 << 20)])
def test_parse_size(text: str, value: int) -> None:
    from pytest_ocibuild.cli import parse_size

    assert parse_size(text) == value


def test_open_executor_purges_on_start(tmp_path: Path,
                                       executor_factory: Callable[..., Executor]) -> None:
    from pytest_ocibuild.build.executor import open_executor

    LocalStore(tmp_path / "s")
    leftover = tmp_path / "s" / "tmp" / f"blob.{dead_pid()}-ffff.0"
    leftover.write_bytes(b"x")
    bundle = tmp_path / "b" / f"ocibuild-{dead_pid()}-0-abcdef012345"
    (bundle / "inputs").mkdir(parents=True)
    open_executor(store=tmp_path / "s", bundle_root=tmp_path / "b")
    assert not leftover.exists() and not bundle.exists()


class _CreatingRuntime:
    """A stand-in for runc while a dead client's reaper still creates its container: the
    state directory exists, ``list`` does not show it yet; after ``ready`` looks it does, and
    ``purge`` deletes it. (Real runc purges are covered by the crash tests.)"""

    def __init__(self, state_dir: Path, cid: str, ready: int) -> None:
        self.state_dir, self.cid, self.ready, self.looks = state_dir, cid, ready, 0
        (state_dir / cid).mkdir(parents=True)

    def list(self) -> list[str]:
        self.looks += 1
        return [self.cid] if self.looks > self.ready and (self.state_dir / self.cid).exists() \
            else []

    def purge(self, prefix: str) -> list[str]:
        os.rmdir(self.state_dir / prefix)
        return [prefix]


def test_purge_waits_for_a_container_still_being_created(tmp_path: Path) -> None:
    from pytest_ocibuild.build.lifecycle import purge_containers

    cid = f"ocibuild-{dead_pid()}-0-abcdef012345"
    runtime = _CreatingRuntime(tmp_path / "state", cid, ready=3)
    assert purge_containers(runtime, wait=5.0) == [cid]
    assert not (tmp_path / "state" / cid).exists()


def test_purge_does_not_wait_on_stale_or_live_state(tmp_path: Path) -> None:
    from pytest_ocibuild.build.lifecycle import purge_containers

    stale = _CreatingRuntime(tmp_path / "a", f"ocibuild-{dead_pid()}-0-abcdef012345", ready=99)
    os.utime(stale.state_dir / stale.cid, (1, 1))  # left by a crash long ago: not in creation
    live = _CreatingRuntime(tmp_path / "b", f"ocibuild-{os.getpid()}-0-abcdef012345", ready=99)
    start = time.monotonic()
    assert purge_containers(stale, wait=5.0) == [] and purge_containers(live, wait=5.0) == []
    assert time.monotonic() - start < 1.0
