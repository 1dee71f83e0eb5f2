"""The result cache: hits return the recorded Build without running; logs are kept."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor, open_executor
from pytest_ocibuild.build.request import CacheMount
from pytest_ocibuild.build.request_io import dump_request
from pytest_ocibuild.build.results import Record, ResultStore, result_key
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import read_blob
from pytest_ocibuild.errors import BuildFailed
from tests.cache.conftest import sh

pytestmark = pytest.mark.runc


def runs(ex: Executor) -> int:
    return ex.runtime.runs  # type: ignore[attr-defined,no-any-return]


def test_hit_returns_the_recorded_build_without_running(executor: Executor,
                                                        busybox: Node) -> None:
    req = sh(busybox, "echo building; sleep 0.3; echo $RANDOM$RANDOM > out")
    first = executor.build(req)
    assert not first.cached and runs(executor) == 1
    start = time.monotonic()
    second = executor.build(req)
    assert time.monotonic() - start < 0.3
    assert second.cached and runs(executor) == 1
    # $RANDOM differs between runs: equal outputs prove nothing ran again
    assert second.outputs == first.outputs and second.outputs_needles == first.outputs_needles
    assert second.duration == pytest.approx(first.duration, abs=1e-3)
    assert "building" in Path(second.log_path or "").read_text()
    assert second.to_dict()["cached"] is True and first.to_dict()["cached"] is False
    stats = executor.stats.to_dict()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["time_saved"] > 0.25


def test_a_new_executor_on_the_same_store_hits(executor_factory: Callable[..., Executor],
                                               busybox: Node, tmp_path: Path) -> None:
    req = sh(busybox, "echo $RANDOM$RANDOM > out")
    a, b = executor_factory(), executor_factory()
    built = a.build(req)
    log = tmp_path / "wanted.log"
    hit = b.build(req, log=log)
    assert hit.cached and hit.outputs == built.outputs and runs(b) == 0
    assert hit.log_path == str(log) and log.exists()


def test_no_cache_forces_a_rebuild_and_records_it(executor_factory: Callable[..., Executor],
                                                  busybox: Node) -> None:
    req = sh(busybox, "echo $RANDOM$RANDOM$RANDOM > out")
    ex = executor_factory()
    first = ex.build(req)
    forced = ex.build(req, cache=False)
    assert not forced.cached and runs(ex) == 2 and forced.outputs != first.outputs
    assert ex.build(req).outputs == forced.outputs  # the forced result replaced the record
    no_cache = executor_factory(cache=False)
    assert not no_cache.build(req).cached and runs(no_cache) == 1


def test_failures_are_not_cached_by_default(executor: Executor, busybox: Node) -> None:
    req = sh(busybox, "echo about to fail; exit 3")
    for expected_runs in (1, 2):
        with pytest.raises(BuildFailed) as exc:
            executor.build(req)
        assert exc.value.exit_code == 3 and runs(executor) == expected_runs
    assert executor.results is not None
    assert executor.results.get(result_key(req)) is None
    # ... but the log of the failed attempt is kept
    assert "about to fail" in executor.results.log_path(result_key(req)).read_text()


def test_failures_are_cached_when_asked(executor_factory: Callable[..., Executor],
                                        busybox: Node) -> None:
    ex = executor_factory(cache_failures=True)
    req = sh(busybox, "echo about to fail; exit 3")
    with pytest.raises(BuildFailed):
        ex.build(req)
    with pytest.raises(BuildFailed) as exc:
        ex.build(req)
    assert runs(ex) == 1 and exc.value.exit_code == 3 and exc.value.reason == "exit-code"
    assert "about to fail" in exc.value.detail and "cached" in exc.value.message
    assert ex.stats.hits == 1
    # an executor that does not cache failures ignores the recorded one
    other = executor_factory()
    with pytest.raises(BuildFailed):
        other.build(req)
    assert runs(other) == 1


def test_timeouts_are_cached_only_for_callers_expecting_them(
        executor_factory: Callable[..., Executor], busybox: Node) -> None:
    ex = executor_factory(cache_failures=True)
    req = sh(busybox, "sleep 30")
    with pytest.raises(BuildFailed, match="timed out"):
        ex.build(req, timeout=0.5)
    assert ex.results is not None and ex.results.get(result_key(req)) is None
    with pytest.raises(BuildFailed, match=r"timed out after 0\.5s"):
        ex.build(req, timeout=0.5, expect_timeout=True)
    assert runs(ex) == 2
    record = ex.results.get(result_key(req))
    assert record is not None and record.reason == "timeout" and record.timeout == 0.5
    # the same or a shorter limit would time out again: a hit, nothing runs
    for limit in (0.5, 0.3):
        with pytest.raises(BuildFailed, match=r"timed out after 0.5s.*\(cached failure\)") as e:
            ex.build(req, timeout=limit, expect_timeout=True)
        assert e.value.reason == "timeout"
    assert runs(ex) == 2
    # a longer limit, or a caller not expecting a timeout, runs the build again
    with pytest.raises(BuildFailed, match=r"timed out after 0\.6s"):
        ex.build(req, timeout=0.6, expect_timeout=True)
    with pytest.raises(BuildFailed, match=r"timed out after 0\.5s and was killed$"):
        ex.build(req, timeout=0.5)
    assert runs(ex) == 4


def test_a_record_whose_outputs_are_gone_is_rebuilt(executor: Executor, busybox: Node,
                                                    root: Path) -> None:
    req = sh(busybox, "echo gone > out")
    node = executor.build(req).outputs[0]
    blob = root / "blobs" / node.digest.hex[:2] / node.digest.hex  # type: ignore[union-attr]
    blob.unlink()
    again = executor.build(req)
    assert not again.cached and runs(executor) == 2
    assert read_blob(executor.store, again.outputs[0].digest) == b"gone\n"  # type: ignore[union-attr]


def test_a_record_whose_output_blob_was_truncated_is_rebuilt(executor: Executor,
                                                             busybox: Node, root: Path) -> None:
    """What a power loss can leave of an unsynced blob: the build runs again and repairs it."""
    req = sh(busybox, "echo truncated > out")
    node = executor.build(req).outputs[0]
    blob = root / "blobs" / node.digest.hex[:2] / node.digest.hex  # type: ignore[union-attr]
    blob.chmod(0o644)
    with blob.open("r+b") as f:
        f.truncate(3)
    again = executor.build(req)
    assert not again.cached and runs(executor) == 2
    assert read_blob(executor.store, again.outputs[0].digest) == b"truncated\n"  # type: ignore[union-attr]


def test_an_unreadable_record_is_a_miss(executor: Executor, busybox: Node, root: Path) -> None:
    req = sh(busybox, "echo x > out")
    executor.build(req)
    results = ResultStore(root)
    results.record_path(result_key(req)).write_bytes(b'{"version": 1, "key": trunc')
    assert not executor.build(req).cached
    assert results.get(result_key(req)) is not None


def test_record_round_trip(busybox: Node) -> None:
    rec = Record(key="ab" * 32, ok=True, outputs=(("build/out", busybox),), needles=((0,),),
                 exit_code=0, duration=1.5, elapsed=2.0, created=3.0)
    assert Record.from_json(rec.to_json()) == rec


def test_digests_without_caches_are_unchanged(busybox: Node) -> None:
    req = sh(busybox, "true")
    assert "caches" not in req.to_dict()
    with_cache = sh(busybox, "true", caches=(CacheMount("c", "var/cache"),))
    assert with_cache.to_dict()["caches"] == {"c": "var/cache"}
    assert with_cache.digest != req.digest


def test_cli_build_cached_json_and_log(tmp_path: Path, busybox: Node, root: Path) -> None:
    req = tmp_path / "req.json"
    dump_request(sh(busybox, "echo from-the-build; echo 1 > out"), req)
    cmd = [sys.executable, "-m", "pytest_ocibuild", "build", str(req), "--store", str(root),
           "--json"]
    outs = [subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120)
            for extra in ([], [], ["--no-cache"])]
    assert [o.returncode for o in outs] == [0, 0, 0], outs[0].stderr
    cached = [json.loads(o.stdout)["cached"] for o in outs]
    assert cached == [False, True, False]
    key = json.loads(outs[0].stdout)["key"]
    log = subprocess.run([sys.executable, "-m", "pytest_ocibuild", "log", key[:10], "--store",
                          str(root)], capture_output=True, text=True)
    assert log.returncode == 0 and "from-the-build" in log.stdout
    unknown = subprocess.run([sys.executable, "-m", "pytest_ocibuild", "log", "0" * 64,
                              "--store", str(root)], capture_output=True, text=True)
    assert unknown.returncode == 2 and "no build" in unknown.stderr


def test_open_executor_has_results_and_caches(tmp_path: Path) -> None:
    ex = open_executor(store=tmp_path / "s", bundle_root=tmp_path / "b")
    assert ex.results is not None and ex.caches is not None and ex.cache
    assert open_executor(store="memory://", bundle_root=tmp_path / "b").results is None
    assert not open_executor(store=tmp_path / "s", bundle_root=tmp_path / "b",
                             cache=False).cache

