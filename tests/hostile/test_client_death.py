"""Nothing outlives its client: kill the process that asked for a build, by any signal, and
within seconds its containers, build processes, reaper, input mounts and bundle directories
are gone, without any purge.

Real runc, real builds, real CLI and pytest processes. Each test gives its processes a
private ``$XDG_RUNTIME_DIR`` (so runc's state dir and the bundle root, see build.locations,
are the test's own and everything found there is the killed run's) and a private store.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ocibuild.build.lifecycle import mounts_under
from pytest_ocibuild.build.runtime.runc import RuncRuntime

REPO = Path(__file__).resolve().parents[2]
CLEANUP_LIMIT = 5.0  # seconds from the kill to nothing left

pytestmark = pytest.mark.runc


@pytest.fixture(autouse=True)
def _needs_runc() -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc); CI installs it")


class Place:
    """A private per-user place: environment, runc state dir and bundle root."""

    def __init__(self, tmp: Path) -> None:
        xdg = tmp / "xdg"
        xdg.mkdir(mode=0o700)
        self.store = tmp / "store"
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg), "OCIBUILD_STORE": str(self.store)}
        self.env.pop("PYTEST_XDIST_WORKER", None)
        self.state = xdg / "ocibuild" / "runc"
        self.bundles = xdg / "ocibuild" / "bundles"
        self.runtime = RuncRuntime("runc", state_dir=self.state)

    def running(self) -> list[str]:
        """Containers that have started (runc removed their exec.fifo)."""
        return [c for c in self.runtime.list() if not (self.state / c / "exec.fifo").exists()]

    def leftovers(self, pid: int, markers: list[str]) -> dict[str, list[str]]:
        """What is left of client ``pid``: containers, processes whose command line holds a
        marker, its reaper, mounts below the bundle root, its bundle directories."""
        tag = f"-{pid}-"
        owned = []
        for base in (self.bundles, self.bundles / "shared"):
            if base.is_dir():
                owned += [p.name for p in base.iterdir() if tag in p.name]
        found = {
            "containers": [c for c in self.runtime.list() if tag in c],
            "processes": live_processes(markers),
            "reapers": reapers_of(pid),
            "mounts": mounts_under(self.bundles) if self.bundles.is_dir() else [],
            "bundles": owned,
        }
        return {k: v for k, v in found.items() if v}


def live_processes(markers: list[str]) -> list[str]:
    """``pid: cmdline`` of each live (not zombie) process whose command line holds a marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(m in cmd for m in markers):
            found.append(f"{entry}: {cmd.strip()}")
    return found


def reapers_of(pid: int) -> list[str]:
    return [p for p in live_processes(["reaper.py"]) if f" {pid} " in p + " "]


def wait_until(cond: Callable[[], object], timeout: float) -> float:
    """Poll ``cond`` until truthy; the seconds it took (``timeout`` + 1 if never)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.02)
    return timeout + 1


def endless(marker: str) -> tuple[list[str], str]:
    """argv of an endless build (its shell's $0 is ``marker``) and its sleep's unique text."""
    nap = f"sleep {86000 + secrets.randbelow(399)}"
    return ["/inputs/busybox", "sh", "-c", f"/inputs/busybox {nap} & wait", marker], nap


def write_request(path: Path, argv: list[str]) -> Path:
    args = "".join(f"  - {a!r}\n" for a in argv)
    path.write_text("inputs:\n  busybox: {path: /bin/busybox}\n"
                    f"command_args:\n{args}outputs: [build/out]\n")
    return path


def kill_and_measure(place: Place, proc: subprocess.Popen[bytes], client: int, sig: int,
                     markers: list[str]) -> float:
    """Send ``sig`` to ``proc``; assert nothing of ``client`` is left within CLEANUP_LIMIT;
    the seconds the cleanup took."""
    os.kill(client, sig)
    took = wait_until(lambda: not place.leftovers(client, markers), CLEANUP_LIMIT)
    assert place.leftovers(client, markers) == {}, f"left {CLEANUP_LIMIT}s after the kill"
    return took


@pytest.mark.parametrize("provider", ["materialize", "fuse"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_cli_leaves_nothing(tmp_path: Path, provider: str, sig: int) -> None:
    """``ocibuild build --timeout 10`` of an endless build, killed while it runs."""
    place = Place(tmp_path)
    marker = f"endless-{secrets.token_hex(6)}"
    argv, nap = endless(marker)
    req = write_request(tmp_path / f"{marker}.yaml", argv)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_ocibuild", "build", str(req), "--timeout", "10",
         "--inputs", provider], cwd=REPO, env=place.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        wait_until(lambda: place.running() or proc.poll() is not None, 30)
        assert place.running(), proc.stderr.read() if proc.poll() is not None else "no build"
        markers = [marker, nap, str(req)]
        # it all exists before the kill: the build, its reaper, its input mount and bundle
        before = place.leftovers(proc.pid, markers)
        expected = {"containers", "processes", "reapers", "mounts", "bundles"}
        if provider == "materialize" and os.geteuid() != 0:
            expected.discard("mounts")  # a normal user's hardlinked inputs are not remounted
        assert expected <= set(before), before
        took = kill_and_measure(place, proc, proc.pid, sig, markers)
        print(f"{provider} {signal.Signals(sig).name}: all gone {took:.2f}s after the kill")
        assert proc.wait(10) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        place.runtime.purge("")


def write_project(root: Path, marker: str) -> tuple[Path, str]:
    """A pytest project with an endless case (``cases/endless.yaml``) and a quick one
    (``cases/quick.yaml``); the endless build's sleep text."""
    argv, nap = endless(marker)
    (root / "cases").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    args = ", ".join(f"{a!r}" for a in argv)
    (root / "cases" / "endless.yaml").write_text(
        "endless:\n  inputs: {busybox: {path: /bin/busybox}}\n"
        f"  command: [{args}]\n  outputs: [build/out]\n"
        "  expect: {outputs: {build/out: {.: never}}}\n")
    (root / "cases" / "quick.yaml").write_text(
        "quick:\n  inputs: {busybox: {path: /bin/busybox}}\n"
        "  command: [/inputs/busybox, sh, -c, 'echo hi > out']\n  outputs: [build/out]\n"
        "  expect: {outputs: {build/out: {.: \"hi\\n\"}}}\n")
    return root, nap


@pytest.mark.parametrize("victim", ["xdist-worker", "pytest"])
def test_killed_pytest_process_leaves_nothing(tmp_path: Path, victim: str) -> None:
    """SIGKILL of an xdist worker (or of a plain pytest process) running an endless case; then
    a rerun with the same ``--basetemp`` works (no INTERNALERROR FileExistsError)."""
    place = Place(tmp_path)
    marker = f"endless-{secrets.token_hex(6)}"
    project, nap = write_project(tmp_path / "project", marker)
    basetemp = tmp_path / "basetemp"
    common = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p",
              "no:cacheprovider", "--basetemp", str(basetemp), "--snapshot-update"]
    xdist = ["-n", "1"] if victim == "xdist-worker" else ["-n", "0"]
    proc = subprocess.Popen([*common, *xdist, "cases/endless.yaml"], cwd=project,
                            env=place.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: place.running() or proc.poll() is not None, 60)
        assert place.running(), proc.stdout.read() if proc.poll() is not None else "no build"
        [cid] = place.running()
        client = int(cid.split("-")[1])
        assert (client != proc.pid) == (victim == "xdist-worker"), (client, proc.pid)
        markers = [marker, nap]
        before = place.leftovers(client, markers)
        expected = {"containers", "processes", "reapers", "mounts", "bundles"}
        if os.geteuid() != 0:  # cases use materialize: a user's inputs are not remounted
            expected.discard("mounts")
        assert expected <= set(before), before
        took = kill_and_measure(place, proc, client, signal.SIGKILL, markers)
        print(f"{victim}: all gone {took:.2f}s after the kill")
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert victim == "pytest" or "crashed" in out or "worker" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        place.runtime.purge("")
    assert not mounts_under(basetemp) if basetemp.exists() else True
    again = subprocess.run([*common, "-n", "0", "cases/quick.yaml"], cwd=project,
                           env=place.env, capture_output=True, text=True, timeout=120)
    assert "INTERNALERROR" not in again.stdout + again.stderr, again.stdout + again.stderr
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a bind mount")
def test_rerun_with_basetemp_holding_an_old_runs_mount(tmp_path: Path) -> None:
    """A read-only bind mount that a killed run (of an older version) left in a bundle below
    ``--basetemp``: pytest's removal of basetemp failed on it, then its mkdir raised
    FileExistsError (INTERNALERROR). The plugin detaches such mounts of dead processes first."""
    place = Place(tmp_path)
    project, _ = write_project(tmp_path / "project", "unused")
    basetemp = tmp_path / "basetemp"
    dead = subprocess.Popen(["true"])
    dead.wait()
    inputs = basetemp / "ocibuild0" / "bundles-materialize" / f"ocibuild-{dead.pid}-0-ab" / "in"
    inputs.mkdir(parents=True)
    (inputs / "busybox").write_bytes(b"x")
    subprocess.run(["mount", "--bind", str(inputs), str(inputs)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(inputs)], check=True)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
             "--basetemp", str(basetemp), "--snapshot-update", "-n", "0", "cases/quick.yaml"],
            cwd=project, env=place.env, capture_output=True, text=True, timeout=120)
        assert "INTERNALERROR" not in run.stdout + run.stderr, run.stdout + run.stderr
        assert run.returncode == 0, run.stdout + run.stderr
        assert mounts_under(basetemp) == []
    finally:
        if mounts_under(basetemp):
            subprocess.run(["umount", "-l", str(inputs)], check=False)


def test_per_user_place_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$XDG_RUNTIME_DIR/ocibuild`` when usable, else ``/tmp/ocibuild-<uid>``, refused (one
    line) when it is a symlink or writable by others: another user could plant it in /tmp."""
    from pytest_ocibuild.build import locations
    from pytest_ocibuild.errors import RuntimeUnavailable

    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert locations.runtime_state_dir() == xdg / "ocibuild" / "runc"
    assert locations.bundle_root() == xdg / "ocibuild" / "bundles"
    assert RuncRuntime().state_dir == xdg / "ocibuild" / "runc"
    assert oct((xdg / "ocibuild" / "runc").stat().st_mode & 0o777) == "0o700"

    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    monkeypatch.setattr(locations, "TMP_BASE", str(tmp))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    mine = tmp / f"ocibuild-{os.geteuid()}"
    assert locations.bundle_root() == mine / "bundles"
    shutil.rmtree(mine)
    (tmp_path / "elsewhere").mkdir()
    mine.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeUnavailable, match="it is a symlink") as e:
        locations.runtime_state_dir()
    assert "\n" not in e.value.message
    mine.unlink()
    mine.mkdir()
    mine.chmod(0o777)
    with pytest.raises(RuntimeUnavailable, match="writable by others"):
        locations.bundle_root()
