"""A build's log is on disk once (in the store, with its stream runs) and goes with gc."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ocibuild.build import logs
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.gc import gc
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.errors import BuildFailed
from tests.cache.conftest import sh

SCRIPT = "for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; mkdir out"


def store_log_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "logs").rglob("*") if p.is_file())


def test_the_log_is_kept_once_with_its_streams(
    executor: Executor, busybox: Node, root: Path,
) -> None:
    build = executor.build(sh(busybox, SCRIPT))
    log = Path(build.log_path or "")
    assert log.parent.parent == root / "logs"  # the store's copy is the one the build wrote
    assert store_log_files(root) == [log, logs.runs_path(log)]
    assert not (executor.bundle_root / "logs").exists() or \
        list((executor.bundle_root / "logs").iterdir()) == []
    assert list((root / "tmp").glob("log.*")) == []  # staging renamed into place
    text = log.read_text()
    assert sorted(text.splitlines()) == sorted(
        f"{s}-{i}" for s in ("out", "err") for i in (1, 2, 3))
    assert logs.read_stream(log, "stdout") == b"out-1\nout-2\nout-3\n"
    assert logs.read_stream(log, "stderr") == b"err-1\nerr-2\nerr-3\n"
    # each byte once: the runs file holds 5 bytes per chunk, no output
    assert b"out-1" not in logs.runs_path(log).read_bytes()
    assert logs.runs_path(log).stat().st_size % 5 == 0


def test_a_failed_build_names_the_kept_log(
    executor: Executor, busybox: Node, root: Path,
) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(sh(busybox, "echo why >&2; exit 3"))
    log = Path(failed.value.log_path or "")
    assert log.parent.parent == root / "logs"
    assert logs.read_stream(log, "stderr") == b"why\n"


def test_a_log_asked_for_elsewhere_is_linked_into_the_store(
    executor: Executor, busybox: Node, root: Path, tmp_path: Path,
) -> None:
    mine = tmp_path / "mine" / "case.log"
    build = executor.build(sh(busybox, SCRIPT), log=mine)
    assert build.log_path == str(mine)
    kept = store_log_files(root)
    assert len(kept) == 2
    assert kept[0].stat().st_ino == mine.stat().st_ino  # a hard link, not a copy
    hit = executor.build(sh(busybox, SCRIPT), log=tmp_path / "again.log")
    assert hit.cached
    assert logs.read_stream(hit.log_path, "stdout") == b"out-1\nout-2\nout-3\n"


def test_gc_removes_a_log_with_its_result(
    executor: Executor, busybox: Node, root: Path,
) -> None:
    executor.build(sh(busybox, SCRIPT))
    assert len(store_log_files(root)) == 2
    report = gc(root, max_age=0, grace=0)
    assert report.records_removed == 1
    assert store_log_files(root) == []


def test_logs_of_older_stores_are_still_read(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    log.write_text("a\nb\n")
    Path(f"{log}.stdout").write_text("a\n")
    Path(f"{log}.stderr").write_text("b\n")
    assert logs.read_stream(log, "stdout") == b"a\n"
    assert logs.read_stream(log, "stderr") == b"b\n"
    logs.keep(log, tmp_path / "new.log", move=False)
    assert logs.read_stream(tmp_path / "new.log", "stderr") == b"b\n"
