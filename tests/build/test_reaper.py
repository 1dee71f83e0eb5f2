"""The reaper helper under real runc runs: sharing, restarts, deferred deletes, a killed client,
the environment and log runc gets, a runtime that is not runc."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.bundle import make_bundle
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.logs import read_stream
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.build.spec import make_spec
from pytest_ocibuild.errors import BundleError

from .conftest import BUSYBOX, Runner, container_id, give_back_scratch
from .test_runc import sh

pytestmark = pytest.mark.runc


def test_concurrent_runs_share_one_reaper(runtime: RuncRuntime, run_bundle: Runner,
                                          tmp_path: Path) -> None:
    """Threads run containers at once through this process's one reaper; each gets its own
    exit code and output, and every container and its cgroups are gone afterwards."""
    assert run_bundle(sh("echo warm")).status.code == 0
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        log = tmp_path / f"log{i}"
        log.write_bytes(b"")
        r = sh(f"echo out-{i}; echo err-{i} >&2; sleep 0.{i}; exit {i}")
        layout = make_bundle(r, make_spec(r, id_maps=IdMaps.detect()), tmp_path / f"b{i}")
        shutil.copy2(BUSYBOX, layout.inputs_dir / "busybox")
        cid = container_id(f"c{i}")
        status = runtime.run(layout.bundle_dir, cid, log=log, timeout=60)
        results[i] = (status.code, log.read_text(), read_stream(log, "stdout").decode(),
                      read_stream(log, "stderr").decode(), cid)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(1, 5):
        code, log, out, err, cid = results[i]
        assert (code, out, err) == (i, f"out-{i}\n", f"err-{i}\n")
        assert sorted(log.splitlines()) == [f"err-{i}", f"out-{i}"]
        assert not (runtime.state_dir / cid).exists()
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{cid}"))
    assert runtime.list() == []


def test_reaper_restarts_after_dying(runtime: RuncRuntime, run_bundle: Runner) -> None:
    from pytest_ocibuild.build.reaper_client import shared_reaper
    from pytest_ocibuild.build.runtime.reaped import PERSONALITY

    assert run_bundle(sh("true")).status.code == 0
    helper = shared_reaper(PERSONALITY).proc
    helper.kill()
    helper.wait()
    ran = run_bundle(sh("cat /proc/self/personality > /build/out; exit 4"))
    assert ran.status.code == 4
    assert ran.layout.output_host_path("build/out").read_text() == "00040000\n"
    assert shared_reaper(PERSONALITY).proc.pid != helper.pid


def test_deferring_deletes(runtime: RuncRuntime, run_bundle: Runner) -> None:
    """Inside the block ``run`` may return before the container is deleted; after it, every
    container is gone, also when the block is left by an exception."""
    with pytest.raises(RuntimeError, match="left early"), runtime.deferring_deletes():
        for _ in range(3):
            assert run_bundle(sh("echo hi")).status.code == 0
        raise RuntimeError("left early")
    assert runtime.list() == []
    with runtime.deferring_deletes():
        ran = run_bundle(sh("sleep 1"), timeout=0.2)
        assert ran.status.timed_out
    assert runtime.list() == []


def test_reaper_kills_the_job_of_a_killed_client_and_exits(tmp_path: Path) -> None:
    """A client killed mid-build: its reaper kills and deletes the container within seconds
    (no purge), and exits."""
    import subprocess
    import sys

    r = sh("sleep 60; echo done > /build/out")
    layout = make_bundle(r, make_spec(r, id_maps=IdMaps.detect()), tmp_path / "b")
    shutil.copy2(BUSYBOX, layout.inputs_dir / "busybox")
    rt = RuncRuntime("runc", state_dir=tmp_path / "state")
    cid = container_id("orphan")
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; "
        "from pytest_ocibuild.build.runtime.runc import RuncRuntime; "
        f"RuncRuntime('runc', state_dir=Path({str(rt.state_dir)!r})).run("
        f"Path({str(layout.bundle_dir)!r}), {cid!r}, log=Path({str(tmp_path / 'log')!r}), "
        "timeout=60)")])
    try:
        deadline = time.monotonic() + 20
        while rt.list() != [cid] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.list() == [cid]
        reapers = [p for p in os.listdir("/proc") if p.isdigit() and _is_reaper_of(p, child.pid)]
        assert len(reapers) == 1
        child.kill()
        child.wait()
        deadline = time.monotonic() + 5
        while (rt.list() or _alive(int(reapers[0]))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.list() == [] and not os.listdir(rt.state_dir)
        assert not _alive(int(reapers[0])), "the reaper outlived its client's cleanup"
        give_back_scratch(layout)
        assert not layout.output_host_path("build/out").exists()
    finally:
        rt.purge("")


def _is_reaper_of(pid: str, client: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(c.endswith(b"reaper.py") for c in cmd) and str(client).encode() in cmd


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_runc_gets_the_callers_environment_and_log(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """runc runs with the caller's environment as it is at ``run`` (not when the reaper
    started), and what it logs (to the reaper's memory file) decides the error."""
    script = tmp_path / "env-runc"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--version*) echo fake; exit 0;; *" run "*) ;; *) exit 0;; esac\n'
        'while [ "$1" != --log ]; do shift; done\n'
        'printf \'{"level":"error","msg":"mark=%s"}\\n\' "$OCIBUILD_TEST_MARK" > "$2"\n'
        "exit 1\n")
    script.chmod(0o755)
    rt = RuncRuntime(str(script), state_dir=tmp_path / "state")
    for mark in ("first", "second"):
        monkeypatch.setenv("OCIBUILD_TEST_MARK", mark)
        with pytest.raises(BundleError, match=f"runc rejected the bundle: mark={mark}$"):
            rt.run(tmp_path, container_id(), log=tmp_path / "log", timeout=10)
    assert sorted(os.listdir(tmp_path / "state")) == []


def test_a_runtime_that_is_not_runc_reports_its_init_pid_file(tmp_path: Path) -> None:
    """Only runc is known to keep the init's pid in state.json: another runc-compatible
    binary (here runc behind a wrapper that says otherwise) is given --pid-file."""
    runc = shutil.which("runc")
    assert runc
    wrapper = tmp_path / "other-runtime"
    wrapper.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "other 1.0"; exit 0; }\n'
                       f'exec {runc} "$@"\n')
    wrapper.chmod(0o755)
    r = sh("echo other > /build/out; exit 6")
    layout = make_bundle(r, make_spec(r, id_maps=IdMaps.detect()), tmp_path / "b")
    shutil.copy2(BUSYBOX, layout.inputs_dir / "busybox")
    rt = RuncRuntime(str(wrapper), state_dir=tmp_path / "state")
    status = rt.run(layout.bundle_dir, container_id(), log=tmp_path / "log", timeout=60)
    give_back_scratch(layout)
    assert status.code == 6
    assert layout.output_host_path("build/out").read_text() == "other\n"
    assert rt.list() == [] and os.listdir(tmp_path / "state") == []
