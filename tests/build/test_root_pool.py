"""RootPool: roots reused by later builds, emptied /tmp, per process, purge of dead pools."""

from __future__ import annotations

import gc
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.bundle import RootSkeleton, make_bundle, root_skeleton
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.request import BuildRequest, Constraints
from pytest_ocibuild.build.root_pool import RootPool, purge_dead
from pytest_ocibuild.build.spec import make_spec

CANON = IdMaps.canonical()


def skeleton(**kw: Any) -> RootSkeleton:
    r = BuildRequest(command_args=("/inputs/busybox", "true"), **kw)
    return root_skeleton(r, make_spec(r, id_maps=CANON))


def test_a_root_is_reused_with_tmp_emptied(tmp_path: Path) -> None:
    pool = RootPool(tmp_path)
    sk = skeleton()
    with pool.use(sk) as first:
        assert first.parent.parent == tmp_path.absolute()
        assert first.parent.name.startswith(f"roots-{os.getpid()}-")
        assert stat.S_IMODE(os.stat(first).st_mode) == 0o750
        assert stat.S_IMODE(os.stat(first / "tmp").st_mode) == 0o1777
        assert sorted(os.listdir(first)) == ["build", "dev", "etc", "inputs", "proc", "tmp"]
        (first / "tmp" / "left").mkdir()
        (first / "tmp" / "left" / "f").write_text("from an earlier build")
        (first / "tmp" / "left").chmod(0o500)
    with pool.use(sk) as again:
        assert again == first and os.listdir(again / "tmp") == []
        with pool.use(sk) as second:  # in use: another one
            assert second != first
    net = skeleton(constraints=Constraints(network_access=True))
    assert net.key != sk.key
    with pool.use(net) as other:
        assert other not in (first, second) and (other / "etc" / "nsswitch.conf").is_file()


def test_a_root_is_dropped_when_the_build_raised(tmp_path: Path) -> None:
    pool = RootPool(tmp_path)
    with pytest.raises(KeyboardInterrupt), pool.use(skeleton()) as root:
        raise KeyboardInterrupt
    assert not root.exists()
    with pool.use(skeleton()) as fresh:
        assert fresh != root


def test_a_changed_tmp_is_not_reused(tmp_path: Path) -> None:
    pool = RootPool(tmp_path)
    with pool.use(skeleton()) as root:
        (root / "tmp").chmod(0o755)
    assert not root.exists()


def test_not_reusable_when_a_mount_point_is_in_tmp(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    assert not skeleton(constraints=Constraints(available_ro_paths=(str(ro),))).reusable
    assert skeleton(constraints=Constraints(available_ro_paths=("/usr/share",))).reusable


def test_bundle_with_a_pooled_root(tmp_path: Path) -> None:
    r = BuildRequest(command_args=("/inputs/busybox", "true"))
    spec = make_spec(r, id_maps=CANON)
    with RootPool(tmp_path / "pool").use(root_skeleton(r, spec)) as root:
        layout = make_bundle(r, spec, tmp_path / "b", rootfs=root)
        assert layout.root_dir == root and not (tmp_path / "b" / "root").exists()
        written = json.loads(layout.config_path.read_text())
        assert written["root"]["path"] == str(root)
        assert {**written, "root": spec["root"]} == spec


def test_pool_is_removed_with_it_and_dead_pools_are_purged(tmp_path: Path) -> None:
    pool = RootPool(tmp_path)
    with pool.use(skeleton()) as root:
        pass
    assert root.exists()
    del pool
    gc.collect()
    assert not root.parent.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"roots-{dead.pid}-0a1b" / "x").mkdir(parents=True)
    (tmp_path / f"roots-{os.getpid()}-0a1b").mkdir()
    assert purge_dead(tmp_path) == [str(tmp_path / f"roots-{dead.pid}-0a1b")]
    assert os.listdir(tmp_path) == [f"roots-{os.getpid()}-0a1b"]


def test_two_pools_in_one_directory(tmp_path: Path) -> None:
    """Executors sharing a bundle root in one process: separate pools, one can go first."""
    a, b = RootPool(tmp_path), RootPool(tmp_path)
    with a.use(skeleton()) as ra, b.use(skeleton()) as rb:
        assert ra.parent != rb.parent
    del a
    gc.collect()
    assert not ra.exists() and rb.exists()
    with b.use(skeleton()) as again:
        assert again == rb
