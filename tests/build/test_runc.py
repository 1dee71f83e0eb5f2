"""Real runc runs of bundles made by make_bundle (inputs populated by hand with busybox)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.bundle import BundleLayout, make_bundle
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.request import AdditionalFile, BuildRequest, Constraints, EnvVar
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.build.spec import make_spec
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.errors import BundleError, RuntimeUnavailable

from .conftest import BUSYBOX, Runner, container_id

pytestmark = pytest.mark.runc


def sh(script: str, **kw: Any) -> BuildRequest:
    kw.setdefault("outputs", ("build/out",))
    return BuildRequest(command_args=("/inputs/busybox", "sh", "-c", script), **kw)


def test_exit_code_and_output(run_bundle: Runner) -> None:
    ran = run_bundle(sh("echo hello > /build/out; exit 3"))
    assert ran.status.code == 3 and not ran.status.timed_out
    assert ran.status.duration > 0
    assert ran.layout.output_host_path("build/out").read_text() == "hello\n"


def test_success_and_signal_exit_codes(run_bundle: Runner) -> None:
    assert run_bundle(sh("true")).status.code == 0
    assert run_bundle(sh("exit 255")).status.code == 255


def test_identity_inside(run_bundle: Runner) -> None:
    ran = run_bundle(sh("id -u > /build/out; id -g >> /build/out; id -un >> /build/out; "
                        "id -gn >> /build/out; hostname >> /build/out; pwd >> /build/out"))
    assert ran.status.code == 0, ran.log
    out = ran.layout.output_host_path("build/out").read_text().split()
    assert out == ["1000", "100", "nixbld", "nixbld", "localhost", "/build"]


def test_hostile_build_cannot_gain_privileges(run_bundle: Runner) -> None:
    """No capabilities inside (only the bounding set is full, as in Nix); becoming root (the
    caller on the host) must fail."""
    ran = run_bundle(sh(
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status | awk '{print $2}' > /build/out;"
        " if /inputs/busybox su -s /inputs/busybox root -c true 2>/dev/null;"
        " then echo became-root >> /build/out; else echo refused >> /build/out; fi;"
        " if chown 0:0 /build 2>/dev/null; then echo chowned >> /build/out;"
        " else echo no-chown >> /build/out; fi"
    ))
    assert ran.status.code == 0, ran.log
    lines = ran.layout.output_host_path("build/out").read_text().split()
    inh, prm, eff, bnd, amb = lines[:5]
    assert inh == prm == eff == amb == "0000000000000000"
    assert int(bnd, 16) == (1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1
    assert lines[5:] == ["refused", "no-chown"]


def test_env_cwd_and_stdin(run_bundle: Runner) -> None:
    r = sh("pwd > /build/sub/out; echo \"$FOO|$EMPTY|$EQ\" >> /build/sub/out; "
           "cat >> /build/sub/out; echo rc=$? >> /build/sub/out",
           working_dir="build/sub", outputs=("build/sub/out",),
           environment_vars=(EnvVar("EMPTY", b""), EnvVar("EQ", b"a=b"), EnvVar("FOO", b"bar")),
           additional_files=(AdditionalFile("build/sub/.keep", b""),))
    ran = run_bundle(r)
    assert ran.status.code == 0, ran.log
    text = ran.layout.output_host_path("build/sub/out").read_text()
    assert text == "/build/sub\nbar||a=b\nrc=0\n"  # stdin is /dev/null: cat ends at once


def test_no_network_only_lo(run_bundle: Runner) -> None:
    ran = run_bundle(sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /build/out; "
                        "/inputs/busybox ip link >> /build/out 2>&1 || true"))
    assert ran.status.code == 0, ran.log
    lines = ran.layout.output_host_path("build/out").read_text().splitlines()
    assert lines[0] == "lo"
    assert next(ln for ln in lines if ": " in ln and "<" in ln).split(": ")[1] == "lo"
    assert not any(ln.startswith(("eth", "ens", "enp", "wl")) for ln in lines)


def test_network_access_shares_host_network(run_bundle: Runner) -> None:
    host = sorted(ln.split(":")[0].strip() for ln in Path("/proc/net/dev").read_text()
                  .splitlines()[2:])
    ran = run_bundle(sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /build/out",
                        constraints=Constraints(network_access=True)))
    assert ran.status.code == 0, ran.log
    assert ran.layout.output_host_path("build/out").read_text().split() == host
    assert ran.spec["mounts"][-1]["destination"] in ("/etc/hosts", "/etc/services",
                                                     "/etc/resolv.conf")


def test_inputs_read_only_scratch_and_tmp_writable(run_bundle: Runner) -> None:
    script = ("touch /inputs/new 2> /build/err; echo $? > /build/out; "
              "(echo x >> /inputs/data) 2>> /build/err; echo $? >> /build/out; "
              "touch /tmp/t && echo tmp-ok >> /build/out; "
              "touch /etc/x 2>> /build/err; echo $? >> /build/out")
    ran = run_bundle(sh(script), populate=lambda lay: (lay.inputs_dir / "data").write_text("d"))
    assert ran.status.code == 0, ran.log
    assert ran.layout.output_host_path("build/out").read_text().split() == [
        "1", "1", "tmp-ok", "1"]
    errors = ran.layout.output_host_path("build/err").read_text().splitlines()
    assert len(errors) == 3
    assert all("Read-only file system" in e or "Permission denied" in e for e in errors)
    assert (ran.layout.inputs_dir / "data").read_text() == "d"


def test_bin_sh(run_bundle: Runner) -> None:
    with_sh = run_bundle(sh("/bin/sh -c 'echo via-bin-sh' > /build/out",
                            constraints=Constraints(provide_bin_sh=True)))
    assert with_sh.status.code == 0, with_sh.log
    assert with_sh.layout.output_host_path("build/out").read_text() == "via-bin-sh\n"
    without = run_bundle(sh("test -e /bin/sh"))
    assert without.status.code == 1


def test_available_ro_paths(run_bundle: Runner, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("host data")
    ran = run_bundle(sh(f"cat {ro}/f > /build/out; touch {ro}/g 2>/dev/null; echo $? >> /build/out",
                        constraints=Constraints(available_ro_paths=(str(ro),))))
    assert ran.status.code == 0, ran.log
    assert ran.layout.output_host_path("build/out").read_text() == "host data1\n"
    assert not (ro / "g").exists()


def test_nix_store_layout(run_bundle: Runner) -> None:
    """inputs_dir == scratch path: new store entries are writable, inputs are not."""
    d = Digest.of(b"")
    r = BuildRequest(
        inputs={"aaa-busybox": FileNode(d, 0, True), "bbb-dir": DirectoryNode(d, 0),
                "ccc-link": SymlinkNode(b"bbb-dir")},
        command_args=("/bin/sh", "-c",
                      "echo out > /nix/store/zzz-out; "
                      "cat /nix/store/ccc-link/f >> /nix/store/zzz-out; "
                      "touch /nix/store/bbb-dir/new 2>/dev/null; echo $? >> /nix/store/zzz-out"),
        scratch_paths=("build", "nix/store"), inputs_dir="nix/store",
        outputs=("nix/store/zzz-out",), constraints=Constraints(provide_bin_sh=True),
    )

    def populate(layout: BundleLayout) -> None:
        shutil.copy2(BUSYBOX, layout.inputs_dir / "aaa-busybox")
        (layout.inputs_dir / "bbb-dir").mkdir()
        (layout.inputs_dir / "bbb-dir" / "f").write_text("in-dir\n")

    ran = run_bundle(r, populate=populate)
    assert ran.status.code == 0, ran.log
    assert ran.layout.output_host_path("nix/store/zzz-out").read_text() == "out\nin-dir\n1\n"


def test_log_captures_stdout_and_stderr_appending(runtime: RuncRuntime, run_bundle: Runner,
                                                   tmp_path: Path) -> None:
    ran = run_bundle(sh("echo to-stdout; echo to-stderr >&2"))
    assert ran.status.code == 0
    assert "to-stdout\n" in ran.log and "to-stderr\n" in ran.log
    log = tmp_path / "pre.log"
    log.write_text("before\n")
    runtime.run(ran.layout.bundle_dir, container_id(), log=log, timeout=60)
    # runc copies the two streams separately: their relative order is not preserved
    text = log.read_text()
    assert text.startswith("before\n")
    assert sorted(text.splitlines()) == ["before", "to-stderr", "to-stdout"]


def test_timeout_kills_and_cleans_up(runtime: RuncRuntime, run_bundle: Runner) -> None:
    start = time.monotonic()
    ran = run_bundle(sh("echo started; sleep 100"), timeout=1)
    assert ran.status.timed_out
    assert ran.status.code == 128 + signal.SIGKILL
    assert 1 <= ran.status.duration < 15 and time.monotonic() - start < 20
    assert "started" in ran.log
    assert runtime.list() == []


def test_keyboard_interrupt_kills_and_cleans_up(runtime: RuncRuntime, run_bundle: Runner) -> None:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_bundle(sh("sleep 100"), timeout=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert runtime.list() == []


def start_sleeper(runtime: RuncRuntime,
                  run_bundle: Runner) -> tuple[threading.Thread, list[Any], str]:
    """A ``sleep 100`` build in a thread, once its container runs: (thread, result, id)."""
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(run_bundle(sh("sleep 100"))))
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (  # started: runc removed its exec.fifo
            runtime.list() and not (runtime.state_dir / runtime.list()[0] / "exec.fifo").exists()):
        time.sleep(0.05)
    [cid] = runtime.list()
    return t, result, cid


def test_purge(runtime: RuncRuntime, run_bundle: Runner) -> None:
    t, result, cid = start_sleeper(runtime, run_bundle)
    assert runtime.purge("no-such-prefix") == []
    assert runtime.purge(cid[:12]) == [cid]
    t.join(20)
    assert not t.is_alive()
    assert result[0].status.code == 128 + signal.SIGKILL
    assert runtime.list() == []


def test_container_id_in_use_is_not_touched(runtime: RuncRuntime, run_bundle: Runner) -> None:
    t, result, cid = start_sleeper(runtime, run_bundle)
    try:
        with pytest.raises(BundleError, match="already in use"):
            runtime.run(Path("/nonexistent"), cid, log=Path(os.devnull), timeout=5)
        assert runtime.list() == [cid]
    finally:
        runtime.purge(cid)
        t.join(20)
    assert result[0].status.code == 128 + signal.SIGKILL


def test_unexecutable_command_is_exit_127(run_bundle: Runner) -> None:
    ran = run_bundle(BuildRequest(command_args=("/inputs/nope",)))
    assert ran.status.code == 127
    assert "/inputs/nope" in ran.log


def test_runc_rejecting_the_bundle(run_bundle: Runner) -> None:
    def bad_mount(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/bad", "type": "nosuchfs", "source": "x"})

    with pytest.raises(BundleError, match=r"runc rejected the bundle: .*(nosuchfs|no such device)"):
        run_bundle(sh("true"), edit_spec=bad_mount)


def fake_runc(tmp_path: Path, message: str) -> str:
    """A 'runc' that logs ``message`` as a fatal error in runc's JSON log and exits 1."""
    script = tmp_path / "fake-runc"
    entry = json.dumps({"level": "error", "msg": message})
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--version*) echo fake; exit 0;; *" run "*) ;; *) exit 0;; esac\n'
        'while [ "$1" != --log ]; do shift; done\n'
        f"printf '%s\\n' '{entry}' > \"$2\"\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return str(script)


def test_namespace_refusal_is_runtime_unavailable(tmp_path: Path) -> None:
    rt = RuncRuntime(fake_runc(tmp_path, "runc run failed: unshare: operation not permitted"),
                     state_dir=tmp_path / "state")
    assert rt.unavailable_reason() is None
    with pytest.raises(RuntimeUnavailable, match="operation not permitted"):
        rt.run(tmp_path, "x", log=tmp_path / "log", timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="demotes root to nobody with setpriv")
def test_unprivileged_runc_is_runtime_unavailable(runtime: RuncRuntime) -> None:
    """Real runc as nobody, asked for root's id maps: refused, reported in one line."""
    setpriv, runc = shutil.which("setpriv"), shutil.which("runc")
    assert setpriv and runc
    base = Path(tempfile.mkdtemp(prefix="ocibuild-nobody-"))
    try:
        base.chmod(0o755)
        wrapper = base / "runc-as-nobody"
        wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --reuid=65534 --regid=65534 '
                           f'--clear-groups {runc} "$@"\n')
        wrapper.chmod(0o755)
        r = sh("true")
        layout = make_bundle(r, make_spec(r, id_maps=IdMaps.detect()), base / "bundle")
        layout.bundle_dir.chmod(0o755)  # only root may enter a bundle; nobody must get to runc
        (base / "state").mkdir(mode=0o777)
        (base / "state").chmod(0o777)
        rt = RuncRuntime(str(wrapper), state_dir=base / "state")
        with pytest.raises(RuntimeUnavailable, match="operation not permitted") as e:
            rt.run(layout.bundle_dir, container_id(), log=base / "log", timeout=30)
        assert "\n" not in e.value.message
        assert rt.list() == []
    finally:
        shutil.rmtree(base)


def test_missing_binary(tmp_path: Path) -> None:
    rt = RuncRuntime("ocibuild-no-such-runc", state_dir=tmp_path / "state")
    reason = rt.unavailable_reason()
    assert reason is not None and "ocibuild-no-such-runc" in reason
    assert "apt-get install runc" in reason and "\n" not in reason
    with pytest.raises(RuntimeUnavailable, match="not found"):
        rt.run(tmp_path, "x", log=tmp_path / "log", timeout=10)
    assert rt.list() == []


def test_default_state_dir_is_per_user() -> None:
    from pytest_ocibuild.build.locations import user_dir

    rt = RuncRuntime()
    assert rt.state_dir.name == "runc"
    assert rt.state_dir.parent == user_dir()
    assert user_dir().name in ("ocibuild", f"ocibuild-{os.geteuid()}")


def test_sandbox_as_nix_shows_it(run_bundle: Runner) -> None:
    """stdin is /dev/null itself (not a runc pipe), no ASLR, Nix's /dev, no /sys, modes."""
    ran = run_bundle(sh(
        "{ readlink /proc/self/fd/0; cat /proc/self/personality; ls -A /dev | tr '\\n' ' ';"
        " echo; readlink /dev/ptmx; [ -e /sys ] && echo sys || echo no-sys;"
        " stat -c '%a %g' / /build /tmp; echo x > /dev/null && echo null-ok; } > /build/out",
        outputs=("build/out",)))
    assert ran.status.code == 0, ran.log
    assert ran.layout.output_host_path("build/out").read_text().splitlines() == [
        "/dev/null", "00040000",
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ",
        "/dev/pts/ptmx", "no-sys", "750 100", "700 100", "1777 0", "null-ok"]
