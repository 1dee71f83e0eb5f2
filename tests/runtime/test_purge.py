"""Purge across runtimes: leftover cgroups of dead clients, every backend's state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.build.lifecycle import purge_cgroups
from pytest_ocibuild.build.runtime import Purgeable, open_runtime, purgeable_runtimes

PIDS = Path("/sys/fs/cgroup/pids")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.geteuid() != 0 or not PIDS.is_dir(), reason="makes a cgroup v1 "
                    "directory: root on a cgroup v1 host")
def test_empty_cgroups_of_dead_clients_are_removed() -> None:
    dead = PIDS / f"ocibuild-{dead_pid()}-0-c0ffee000000"
    alive = PIDS / f"ocibuild-{os.getpid()}-0-c0ffee000001"
    dead.mkdir()
    alive.mkdir()
    try:
        gone = purge_cgroups()
        assert str(dead) in gone and not dead.exists()
        assert alive.is_dir()  # a live client's
    finally:
        for d in (dead, alive):
            if d.exists():
                d.rmdir()


def test_store_purge_looks_at_each_backend_used(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert purgeable_runtimes() == []  # nothing ran yet: no state dir is made
    (run / "ocibuild" / "crun").mkdir(parents=True)
    (run / "ocibuild" / "runc").mkdir()
    found = purgeable_runtimes()
    assert sorted(r.state_dir.name for r in found) == ["crun", "runc"]
    assert all(isinstance(r, Purgeable) for r in found)


def test_the_fake_keeps_no_state() -> None:
    assert not isinstance(open_runtime("fake"), Purgeable)
