"""The crun backend (build/runtime/crun.py): real builds through ``open_executor(runtime=...)``.

The helpers here (``Place``, ``hello``, ``sh``, ``fails``) serve tests/runtime/test_runsc.py too.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor, open_executor
from pytest_ocibuild.build.lifecycle import mounts_under
from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.request_io import load_request
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.errors import BuildFailed
from tests.runtime.conftest import ROOT, require

AS_ROOT = os.geteuid() == 0


class Place:
    """A private ``$XDG_RUNTIME_DIR`` (so the backend's state dir is the test's own), a store,
    and an executor over them."""

    def __init__(self, runtime: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        require(runtime)
        xdg = tmp / "xdg"
        xdg.mkdir(mode=0o700, parents=True)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        self.runtime = runtime
        self.env = {**os.environ}
        self.env.pop("PYTEST_XDIST_WORKER", None)
        self.store = tmp / "store"
        self.state = xdg / "ocibuild" / runtime
        self.ex: Executor = open_executor(store=self.store, runtime=runtime, cache=False)
        self.busybox = ingest_path(self.ex.store, Path("/bin/busybox"))

    def containers(self) -> list[str]:
        """What is left in the backend's state dir (files and directories)."""
        return sorted(os.listdir(self.state)) if self.state.is_dir() else []


def hello(place: Place) -> dict[str, object]:
    req = load_request(ROOT / "examples/hello.yaml",
                       ingest=lambda p: ingest_path(place.ex.store, p))
    return place.ex.build(req).to_dict()["outputs"]


def sh(place: Place, script: str, **kw: object) -> BuildRequest:
    return BuildRequest(inputs={"busybox": place.busybox},
                        command_args=("/inputs/busybox", "sh", "-c", script),
                        environment_vars=(), **kw)  # type: ignore[arg-type]


def fails(place: Place, request: BuildRequest, **kw: object) -> BuildFailed:
    with pytest.raises(BuildFailed) as failed:
        place.ex.build(request, **kw)  # type: ignore[arg-type]
    return failed.value


def live(marker: str) -> list[str]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker.encode() in cmd and int(pid) != os.getpid():
            found.append(pid)
    return found


def wait_gone(marker: str, place: Place, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (live(marker) or place.containers()):
        time.sleep(0.05)
    assert live(marker) == [] and place.containers() == []


# --- the checks, one function per behaviour (test_runsc.py calls them too) -----------------

def check_hello_as_runc(place: Place, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = hello(place)
    assert ours == hello(Place("runc", tmp / "runc", monkeypatch))
    assert place.containers() == []


def check_host_dev_null(place: Place) -> None:
    """The build's stdin is not the host's /dev/null: crun and runsc chown their container's
    stdio (to the build's uid, to the sandbox's nobody), which would give it away."""
    before = os.stat("/dev/null")
    failed = fails(place, sh(place, "cat; ls -ln /dev/null; exit 3"))
    assert failed.exit_code == 3, failed.detail
    after = os.stat("/dev/null")
    assert (after.st_uid, after.st_gid, after.st_mode) == \
        (before.st_uid, before.st_gid, before.st_mode)


def check_exit_code(place: Place) -> None:
    failed = fails(place, sh(place, "echo bye; exit 7"))
    assert failed.exit_code == 7
    assert place.containers() == []


def check_missing_command(place: Place) -> None:
    for argv in (("/inputs/nope",), ("/inputs",)):  # missing, a directory
        failed = fails(place, BuildRequest(inputs={"busybox": place.busybox},
                                           command_args=argv, environment_vars=()))
        assert failed.exit_code == 127, (argv, failed.detail)
    assert place.containers() == []


def check_timeout(place: Place) -> None:
    nap = f"sleep {86000 + secrets.randbelow(399)}"
    start = time.monotonic()
    failed = fails(place, sh(place, f"/inputs/busybox {nap} & wait"), timeout=1.5)
    assert failed.reason == "timeout" and time.monotonic() - start < 15
    wait_gone(nap, place, 2.0)


def check_client_death(place: Place, tmp: Path) -> None:
    """``ocibuild build`` killed (SIGKILL) mid-build: no container, process or state left."""
    nap = f"sleep {86000 + secrets.randbelow(399)}"
    req = tmp / "endless.yaml"
    req.write_text("inputs:\n  busybox: {path: /bin/busybox}\ncommand_args:\n"
                   f"  - /inputs/busybox\n  - sh\n  - -c\n  - '/inputs/busybox {nap} & wait'\n"
                   "outputs: [build/out]\n")
    env = {**place.env, "OCIBUILD_STORE": str(tmp / "cli-store")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest_ocibuild", "build", "--runtime",
                             place.runtime, str(req)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # runsc's build processes live in gVisor's kernel, not the host's: its sandbox process
    # (its command line names the container id) stands for them
    inside = place.runtime == "runsc"

    def started() -> list[str]:
        ids = place.ex.runtime.list()  # type: ignore[attr-defined]
        running = all(live(cid) for cid in ids) if inside else live(nap)
        return ids if ids and running else []

    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and not started():
            time.sleep(0.05)
        ids = started()
        assert ids, proc.stderr.read() if proc.poll() is not None else "no build started"  # type: ignore
        time.sleep(0.5)  # it runs
    finally:
        proc.kill()  # also when it did not start: it is endless
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    for marker in (nap, *ids):
        wait_gone(marker, place)
    # and its bundle pool, with the inputs' read-only mount (the reaper removes them)
    bundles = place.state.parent / "bundles"
    pools = bundles / "shared"

    def left() -> list[str]:
        owned = [p.name for p in pools.iterdir() if f"-{proc.pid}-" in p.name] \
            if pools.is_dir() else []
        return mounts_under(bundles) + owned

    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == []


def check_setuid_refused(place: Place) -> None:
    """chmod u+s is refused (the spec's seccomp filter): exit 11, 10 if it was allowed."""
    failed = fails(place, sh(place, ": > f; if chmod 4755 f; then exit 10; fi; "
                                    "ls -l f; exit 11"))
    assert failed.exit_code == 11, failed.detail


def check_no_network(place: Place) -> None:
    """Only ``lo`` exists and 1.1.1.1 is unreachable: exit 11 (12-14 name what was not so)."""
    script = ("ifs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); "
              "echo ifs=$ifs; [ \"$ifs\" = lo, ] || exit 12; "
              "/inputs/busybox nc -w 2 1.1.1.1 53 </dev/null 2>err && exit 13; cat err; "
              "grep -qE 'unreachable|No route' err || exit 14; exit 11")
    failed = fails(place, sh(place, script))
    assert failed.exit_code == 11, failed.detail


def check_pids_limit(place: Place) -> BuildFailed:
    script = "i=0; while [ $i -lt 64 ]; do /inputs/busybox sleep 5 & i=$((i+1)); done; wait"
    return fails(place, sh(place, script, limits=Limits(pids=16)))


# --- crun ------------------------------------------------------------------------------------

@pytest.fixture
def crun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Place:
    return Place("crun", tmp_path, monkeypatch)


pytestmark = pytest.mark.runc


def test_hello_same_digest_as_runc(crun: Place, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    check_hello_as_runc(crun, tmp_path, monkeypatch)


def test_host_dev_null_untouched(crun: Place) -> None:
    check_host_dev_null(crun)


def test_exit_code(crun: Place) -> None:
    check_exit_code(crun)


def test_missing_command_is_127(crun: Place) -> None:
    check_missing_command(crun)


def test_timeout_kills_and_leaves_nothing(crun: Place) -> None:
    check_timeout(crun)


def test_killed_client_leaves_nothing(crun: Place, tmp_path: Path) -> None:
    check_client_death(crun, tmp_path)


def test_seccomp_refuses_setuid_chmod(crun: Place) -> None:
    check_setuid_refused(crun)


def test_network_unreachable(crun: Place) -> None:
    check_no_network(crun)


def test_pids_limit_applied(crun: Place) -> None:
    """crun applies linux.resources.pids in v1 (a normal user's spec: RLIMIT_NPROC): the fork
    at the limit fails."""
    failed = check_pids_limit(crun)
    assert "Resource temporarily unavailable" in failed.detail or "fork" in failed.detail


@pytest.mark.xfail(not AS_ROOT, strict=True, reason="a normal user gets no pids cgroup on "
                   "cgroup v1 (limits are rlimits, which leave no event; as for runc)")
def test_pids_limit_is_named(crun: Place) -> None:
    assert check_pids_limit(crun).reason == "too-many-processes"


def check_memory_limit(place: Place) -> BuildFailed:
    if not AS_ROOT:  # nothing would stop the hog short of the host's own memory
        pytest.fail("a normal user gets no memory cgroup on cgroup v1: not run")
    hog = "/inputs/busybox awk 'BEGIN { s = \"x\"; while (1) s = s s }'"
    return fails(place, sh(place, hog, limits=Limits(memory=64 << 20)))


@pytest.mark.xfail(not AS_ROOT, strict=True, reason="a normal user gets no memory cgroup on "
                   "cgroup v1 (as for runc: build/limits.py)")
def test_memory_limit_applied(crun: Place) -> None:
    """crun applies linux.resources.memory in v1: the hog is OOM-killed (SIGKILL)."""
    failed = check_memory_limit(crun)
    assert failed.reason == "out-of-memory" or failed.exit_code == 137, failed


@pytest.mark.xfail(not AS_ROOT, strict=True, reason="a normal user gets no memory cgroup on "
                   "cgroup v1: no memory limit at all (as for runc)")
def test_memory_limit_is_named(crun: Place) -> None:
    assert check_memory_limit(crun).reason == "out-of-memory"
