"""Identical builds at the same time run once; concurrent writers of one key never collide.

Nixery's bug: concurrent uploads of one layer shared a staging name and failed with
"rename staging/<hash> … no such file or directory". Here many threads and processes build,
record and log the same key at once; nothing fails and nothing is left torn or behind.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.gc import verify
from pytest_ocibuild.build.request_io import dump_request
from pytest_ocibuild.build.results import Record, ResultStore
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from tests.cache.conftest import REPO, child_cmd, sh

pytestmark = pytest.mark.runc
WRITERS = 16


def test_eight_threads_one_build(executor: Executor, busybox: Node) -> None:
    req = sh(busybox, "sleep 0.5; echo $RANDOM$RANDOM > out")
    barrier = threading.Barrier(8)

    def go(_: int) -> tuple[object, bool]:
        barrier.wait()
        b = executor.build(req)
        return b.outputs, b.cached

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(go, range(8)))
    assert executor.runtime.runs == 1  # type: ignore[attr-defined]
    assert len({outputs for outputs, _ in got}) == 1
    assert sorted(cached for _, cached in got) == [False] + [True] * 7
    assert executor.stats.hits == 7 and executor.stats.misses == 1


def test_four_processes_one_build(tmp_path: Path, root: Path, busybox: Node) -> None:
    req = tmp_path / "req.json"
    dump_request(sh(busybox, "sleep 1; echo $RANDOM$RANDOM > out"), req)
    procs = [subprocess.Popen(child_cmd(root, tmp_path / f"w{i}", req), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    builds = [json.loads(o.splitlines()[-1]) for o, _ in outs]
    assert len((tmp_path / "runs.txt").read_text().splitlines()) == 1
    assert all(b["outputs"] == builds[0]["outputs"] for b in builds)
    assert sorted(b["cached"] for b in builds) == [False, True, True, True]
    assert sum(b["stats"]["misses"] for b in builds) == 1


def _race_worker(root: str, tree: str, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    try:
        barrier.wait(timeout=60)
        store, results = LocalStore(root), ResultStore(root)
        node = ingest_path(store, tree)  # every blob and directory written by all at once
        key = "5a" * 32
        log = Path(tree).parent / "log.txt"
        for _ in range(20):
            results.put(Record(key=key, ok=True, outputs=(("build/out", node),),
                               needles=((),), created=1.0))
            results.save_log(key, log)
            record = results.get(key)
            assert record is not None and record.nodes == (node,)
        out.put(("ok", node))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def test_many_processes_write_one_key_at_once(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for i in range(40):
        (tree / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 5}" / f"f{i}").write_bytes(bytes([i]) * (1 + i * 9973))
    (tmp_path / "log.txt").write_text("the log\n" * 1000)
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(WRITERS), ctx.Queue()
    root = tmp_path / "store"
    procs = [ctx.Process(target=_race_worker, args=(str(root), str(tree), barrier, queue))
             for _ in range(WRITERS)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [g[1] for g in got if g[0] != "ok"]
    assert not errors, errors[0]
    assert len({g[1] for g in got}) == 1
    report = verify(root)
    assert report.ok and report.checked > 40, (report.corrupt, report.missing)
    assert LocalStore(root).staging_files() == []
    assert ResultStore(root).log_path("5a" * 32).read_text() == "the log\n" * 1000


def test_threads_and_processes_share_key_locks(tmp_path: Path) -> None:
    """A key lock excludes other threads of the same process as well as other processes."""
    results = ResultStore(tmp_path)
    inside, peak = [0], [0]
    guard = threading.Lock()

    def hold(_: int) -> None:
        with results.lock("ab" * 32):
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            threading.Event().wait(0.02)
            with guard:
                inside[0] -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hold, range(32)))
    assert peak[0] == 1


def test_concurrent_identical_builds_with_fuse(executor_factory: Callable[..., Executor],
                                               busybox: Node) -> None:
    ex = executor_factory(provider="fuse")
    req = sh(busybox, "sleep 0.3; cat /inputs/busybox | md5sum > out")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: ex.build(req).outputs, range(4)))
    assert len(set(got)) == 1 and ex.runtime.runs == 1  # type: ignore[attr-defined]
