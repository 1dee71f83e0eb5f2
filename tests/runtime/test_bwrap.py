"""The bwrap backend: the config.json -> bwrap translation, and real builds under bubblewrap.

The hostile-build tests written for runc (containment, special bits, identity, limits) run
here again with their executors swapped for bwrap ones (the fixtures below override theirs).
"""
# ruff: noqa: F401, F811

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.bundle import make_bundle
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.build.request import BuildRequest, Constraints, EnvVar
from pytest_ocibuild.build.runtime import open_runtime
from pytest_ocibuild.build.runtime.bwrap import BwrapRuntime, caller_id_maps
from pytest_ocibuild.build.runtime.bwrap_alias import ALIAS, aliased, below_unsearchable
from pytest_ocibuild.build.runtime.bwrap_args import bwrap_args, prlimit_args, tmpfs_size
from pytest_ocibuild.build.runtime.seccomp_bpf import bpf_file, compile_bpf
from pytest_ocibuild.build.seccomp import seccomp_profile
from pytest_ocibuild.build.spec import make_spec
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import read_blob
from pytest_ocibuild.errors import BuildFailed, BundleError, RuntimeUnavailable

# The runc suites' tests and fixtures, run here with the executors below (imported to be
# collected: hence no F401).
from tests.hostile.conftest import probe
from tests.hostile.test_containment import (
    REFUSED,
    run_probe,
    test_orphaned_setsid_processes_die_with_the_build,
    test_the_build_sees_only_its_own_processes,
    test_the_host_loopback_is_unreachable,
)
from tests.hostile.test_identity import test_another_account_cannot_write_into_a_running_build
from tests.hostile.test_identity import (
    test_concurrent_builds_run_as_distinct_unused_ids as _distinct_ids,
)
from tests.hostile.test_limits import (
    test_a_build_over_its_disk_budget_is_refused,
    test_a_fork_bomb_stops_at_the_pids_limit,
    test_a_memory_hog_is_reported_as_out_of_memory,
    test_a_silent_build_is_killed_after_max_silent_time,
)
from tests.hostile.test_special_bits import (
    bits_binary,
    test_special_bits_are_refused_inside_the_build,
)
from tests.integration.conftest import BUSYBOX, busybox, shared_store
from tests.runtime.conftest import ROOT

AS_ROOT = os.geteuid() == 0


def _spec(**kw: object) -> dict[str, object]:
    request = BuildRequest(command_args=("/inputs/busybox", "true"), **kw)  # type: ignore[arg-type]
    return make_spec(request, id_maps=IdMaps.canonical(), cgroups=False,
                     limits=Limits().resolved())


def test_the_spec_becomes_bwrap_options_in_mount_order() -> None:
    argv = bwrap_args(_spec(), "/b", seccomp_fd=4)
    assert argv[:2] == ["--unshare-all", "--unshare-user"] and "--share-net" not in argv
    assert {"--die-with-parent", "--new-session", "--as-pid-1", "--clearenv"} <= set(argv)
    for flag, value in (("--uid", "1000"), ("--gid", "100"), ("--cap-drop", "ALL"),
                        ("--hostname", "localhost"), ("--chdir", "/build"), ("--seccomp", "4"),
                        ("--json-status-fd", "3")):
        assert argv[argv.index(flag) + 1] == value, flag
    assert argv[-3:] == ["--", "/inputs/busybox", "true"]
    pairs = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1)]
    order = [("--bind", "/b/root"), ("--proc", "/proc"), ("--dev", "/dev"),
             ("--tmpfs", "/dev/shm"), ("--bind", "/b/scratch/" + argv[
                 argv.index("/build") - 1].rsplit("/", 1)[1]),
             ("--ro-bind", "/b/inputs"), ("--remount-ro", "/dev")]
    where = [pairs.index(p) for p in order]
    assert where == sorted(where), pairs
    shm = argv.index("/dev/shm")
    assert argv[shm - 5:shm] == ["--perms", "1777", "--size", str(64 << 20), "--tmpfs"]
    # what --dev provides is not bound again; devpts is --dev's own
    assert "/dev/null" not in argv and "/dev/pts" not in argv


def test_a_root_the_build_user_owns_is_read_only_but_tmp() -> None:
    argv = bwrap_args(_spec(), "/b", seccomp_fd=4, writable_in_root=("/tmp",))
    i = argv.index("/b/root")
    assert argv[i - 1:i + 5] == ["--ro-bind", "/b/root", "/", "--bind", "/b/root/tmp", "/tmp"]


def test_network_access_and_the_environment() -> None:
    spec = _spec(constraints=Constraints(network_access=True))
    assert "--share-net" in bwrap_args(spec, "/b", seccomp_fd=4)  # as runc shares it
    spec = _spec(environment_vars=(EnvVar("A", b"x=y"), EnvVar("B", b"")))
    argv = bwrap_args(spec, "/b", seccomp_fd=4)
    i = argv.index("--clearenv")
    assert argv[i + 1:i + 7] == ["--setenv", "A", "x=y", "--setenv", "B", ""]


def test_rlimits_become_prlimit_options() -> None:
    assert prlimit_args(_spec()) == [f"--fsize={(10 << 30) + 1}:{(10 << 30) + 1}",
                                     "--nofile=1024:1024", "--nproc=4096:4096"]
    as_root = make_spec(BuildRequest(command_args=("x",)), id_maps=IdMaps.canonical(),
                        cgroups=True)
    assert "--nproc=4096:4096" in prlimit_args(as_root)  # the pids limit, also as rlimit


def test_what_bwrap_cannot_do_is_refused() -> None:
    spec = _spec()
    spec["mounts"].append({"destination": "/sys", "type": "sysfs", "source": "sysfs",  # type: ignore[attr-defined]
                           "options": []})
    with pytest.raises(BundleError, match="sysfs"):
        bwrap_args(spec, "/b", seccomp_fd=4)
    with pytest.raises(BundleError, match="seccomp"):
        bwrap_args(_spec(), "/b", seccomp_fd=None)
    assert tmpfs_size("65536k") == 64 << 20 and tmpfs_size("2m") == 2 << 20
    with pytest.raises(BundleError):
        tmpfs_size("50%")


def test_the_seccomp_filter_compiles_once_per_user(tmp_path: Path) -> None:
    profile = seccomp_profile()
    program = compile_bpf(profile)
    assert len(program) % 8 == 0 and len(program) > 8 * 500  # classic BPF, the allowlist
    path = bpf_file(profile, tmp_path)
    assert path.read_bytes() == program and bpf_file(profile, tmp_path) == path


@pytest.mark.parametrize(("line", "error"), [
    ("bwrap: No permission to create new namespace, likely because the kernel does not "
     "allow non-privileged user namespaces.", RuntimeUnavailable),
    ("bwrap: Can't find source path /nope: No such file or directory", BundleError),
])
def test_bwraps_own_failures_are_exceptions(tmp_path: Path, line: str, error: type) -> None:
    runtime = BwrapRuntime()
    log = tmp_path / "log"
    log.write_text("the build's output\n" + line + "\n")
    runtime._logs.log = log
    with pytest.raises(error, match="bwrap"):
        runtime._check_error('{ "child-pid": 5 }\n', 1)
    log.write_text("bwrap: execvp /x: No such file or directory\n")
    assert runtime._check_error('{ "child-pid": 5 }\n', 1) == 127
    # the command ran: whatever it printed, its exit code is the build's
    assert runtime._check_error('{ "child-pid": 5 }\n{ "exit-code": 1 }\n', 1) == 1


# bwrap maps only the build user (1000) into its user namespace: setuid(0) names an unmapped
# id (EINVAL) where runc, which maps container root, answers EPERM. Refused either way.
BWRAP_REFUSED = {**REFUSED, "setuid-0": {"EPERM", "EINVAL"}}


@pytest.mark.parametrize("attack", sorted(BWRAP_REFUSED))
def test_an_attack_is_refused(executor: Executor, busybox: Node, probe: Node,
                              attack: str) -> None:
    seen = run_probe(executor, busybox, probe, attack)
    assert seen[attack] in BWRAP_REFUSED[attack], f"{attack}: the build saw {seen[attack]}"


def test_setpriv_takes_host_ids_as_root_and_namespace_ids_in_a_users_namespace() -> None:
    spec = _spec()  # canonical maps: container root host uid 1000 / gid 100, the build user 100000
    assert BwrapRuntime()._identity(spec, {})[:7] == [  # type: ignore[arg-type]
        "setpriv", "--reuid", "100000", "--regid", "100000", "--groups", "100"]
    assert BwrapRuntime()._identity(spec, {}, in_userns=True)[:7] == [  # type: ignore[arg-type]
        "setpriv", "--reuid", "1000", "--regid", "100", "--groups", "0"]


def test_concurrent_builds_run_as_distinct_unused_ids(kept: Executor, busybox: Node) -> None:
    _distinct_ids(kept, busybox)


def _require() -> None:
    reason = BwrapRuntime().unavailable_reason()
    if reason:
        pytest.fail(f"bwrap is unavailable: {reason} (apt-get install bubblewrap)")


@pytest.fixture
def bundles() -> Iterator[Path]:
    """A bundle root under /tmp, reachable by the build's host uid (no bwrap_alias needed)."""
    root = Path(tempfile.mkdtemp(prefix="ocibuild-bwrap-test-"))
    root.chmod(0o711)
    yield root / "bundles"
    remove_tree(root)


def _executor(bundles: Path, store: LocalStore, provider: str = "materialize",
              **kw: object) -> Executor:
    _require()
    return Executor(store, inputs=open_input_provider(provider),
                    runtime=open_runtime("bwrap"), bundle_root=bundles,
                    **kw)  # type: ignore[arg-type]


def _no_sandbox_left() -> list[str]:
    """Processes below this one's reaper still alive (bwrap and the sandbox)."""
    procs: dict[int, tuple[int, str]] = {}  # pid -> (ppid, state)
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            procs[int(entry.name)] = (int(fields[1]), fields[0])
    reapers = {p for p, (pp, _) in procs.items() if pp == os.getpid()}
    return [str(p) for p, (pp, st) in procs.items() if pp in reapers and st != "Z"]


@pytest.fixture(params=["materialize", "fuse"])
def provider(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def executor(bundles: Path, shared_store: LocalStore, provider: str) -> Iterator[Executor]:
    """The hostile suites' executor, under bwrap; fails if it leaves bundles or sandboxes."""
    ex = _executor(bundles, shared_store, provider)
    yield ex
    leftovers = [p.name for p in bundles.glob("ocibuild-*")]
    assert leftovers == [], f"bundles left behind: {leftovers}"
    assert _no_sandbox_left() == []


@pytest.fixture
def lex(bundles: Path, shared_store: LocalStore) -> Executor:
    return _executor(bundles, shared_store)


@pytest.fixture
def kept(bundles: Path, shared_store: LocalStore) -> Iterator[Executor]:
    ex = _executor(bundles, shared_store, keep_bundles=True, max_parallel=2)
    yield ex
    for p in bundles.glob("ocibuild-*"):
        remove_tree(p)


def _sh(busybox: Node, script: str, **kw: object) -> BuildRequest:
    return BuildRequest(inputs={"busybox": busybox},
                        command_args=("/inputs/busybox", "sh", "-c", script),
                        **kw)  # type: ignore[arg-type]


def test_hello_has_runcs_digest() -> None:
    _require()
    digests = []
    for runtime in ("runc", "bwrap"):
        # its own store and runtime dir (0700: bwrap_alias reaches it)
        tmp = Path(tempfile.mkdtemp(prefix=f"ocibuild-{runtime}-test-"))
        env = {**os.environ, "OCIBUILD_STORE": str(tmp / "store"), "XDG_RUNTIME_DIR": str(tmp)}
        try:
            res = subprocess.run([sys.executable, "-m", "pytest_ocibuild", "build", "--runtime",
                                  runtime, "--no-cache", "examples/hello.yaml"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=300)
        finally:
            remove_tree(tmp)
        assert res.returncode == 0, res.stderr
        digests.append(res.stdout)
    assert digests[0] == digests[1] and "42d80d45" in digests[1], digests


def test_exit_code_and_output(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(_sh(busybox, "echo to-the-log; exit 3"))
    assert failed.value.reason == "exit-code" and failed.value.exit_code == 3, failed.value
    assert "to-the-log" in failed.value.detail


def test_the_callers_own_ids_build_as_a_normal_user_only(bundles: Path,
                                                        shared_store: LocalStore,
                                                        busybox: Node) -> None:
    """A normal user without subordinate ids gets ``caller_id_maps`` (bwrap maps the caller
    to the build user); as root those maps would make root the build user: refused."""
    ex = _executor(bundles, shared_store, id_maps=caller_id_maps())
    request = _sh(busybox, "/inputs/busybox id -u")
    if AS_ROOT:
        with pytest.raises(BundleError, match="no host id other than root"):
            ex.build(request)
        return
    built = ex.build(request)
    assert Path(built.log_path or "").read_text().strip() == "1000"


def test_a_missing_command_is_127(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(BuildRequest(inputs={"busybox": busybox}, command_args=("/nope",)))
    assert failed.value.exit_code == 127, failed.value


def test_a_timeout_kills_the_whole_sandbox_promptly(lex: Executor, busybox: Node) -> None:
    start = time.monotonic()
    with pytest.raises(BuildFailed) as failed:
        lex.build(_sh(busybox, "/inputs/busybox sleep 100 & /inputs/busybox setsid "
                               "/inputs/busybox sleep 100 & /inputs/busybox sleep 100"),
                  timeout=1)
    took = time.monotonic() - start
    assert failed.value.reason == "timeout" and took < 5, (failed.value, took)
    assert _no_sandbox_left() == []
    out = subprocess.run(["pgrep", "-f", "busybox sleep 100"], capture_output=True, text=True)
    assert out.stdout == "", out.stdout


def test_setuid_chmod_is_refused_by_the_filter(executor: Executor, busybox: Node) -> None:
    build = executor.build(_sh(busybox, (
        ": > f; chmod 4755 f 2> out; echo setuid=$? >> out; chmod 2755 f 2>> out; "
        "echo setgid=$? >> out; chmod 755 f; echo plain=$? >> out; "
        "/inputs/busybox stat -c %a f >> out"), outputs=("build/out",)))
    text = read_blob(executor.store, build.outputs[0].digest).decode()  # type: ignore[union-attr]
    assert "setuid=1" in text and "setgid=1" in text and "plain=0" in text, text
    assert "Operation not permitted" in text and text.strip().endswith("755"), text


def test_etc_is_read_only_and_the_network_is_down(executor: Executor, busybox: Node) -> None:
    build = executor.build(_sh(busybox, (
        "echo x > /etc/passwd 2> out; echo etc=$? >> out; "
        "/inputs/busybox cat /proc/net/dev >> out; "
        "/inputs/busybox ls -l /proc/self/fd/ >> out; /inputs/busybox id >> out"),
        outputs=("build/out",)))
    text = read_blob(executor.store, build.outputs[0].digest).decode()  # type: ignore[union-attr]
    assert "etc=1" in text, text
    devices = [ln.split(":")[0].strip() for ln in text.splitlines() if ":" in ln
               and ln.split(":")[0].strip().isidentifier()]
    assert devices == ["lo"], text  # only the loopback: a network namespace of its own
    assert "uid=1000" in text and "gid=100" in text, text
    # nothing of the reaper's or bwrap's reaches the build: its control socket, bwrap's
    # status memory file, the seccomp file
    for leak in ("socket:", "runc-log", ".bpf", "/tmp", "/proc/"):
        assert leak not in text.split("uid=")[0].split("lo:")[1], text


@pytest.mark.skipif(not AS_ROOT, reason="chowns the bundle to another group, as root does")
def test_a_bundle_reachable_through_the_supplementary_group_is_not_aliased(
        bundles: Path) -> None:
    bundle = bundles / "b"  # 0710 to container root's group, as bundle.owners makes it
    (bundle / "root").mkdir(parents=True)
    os.chown(bundle, 0, 905969664)
    bundle.chmod(0o710)
    config = {"root": {"path": "root"}, "mounts": []}
    assert aliased(config, bundle, 906035200, 906035200, 905969664) == (config, [])
    assert aliased(config, bundle, 906035200, 906035200)[1] == [str(bundle / "root")]


def test_a_bwrap_setup_failure_is_a_bundle_error(tmp_path: Path, shared_store: LocalStore,
                                                  busybox: Node) -> None:
    """bwrap's own failure (here a bind source gone before it runs) is BundleError with its
    message, not the build's exit 1."""
    _require()
    request = _sh(busybox, "true")
    maps = IdMaps.detect(reach=tmp_path)
    spec = make_spec(request, id_maps=maps, network_files=())
    spec["mounts"].append({"destination": "/build/gone", "type": "none",  # type: ignore[attr-defined]
                           "source": str(tmp_path / "gone"), "options": ["rbind", "ro"]})
    (tmp_path / "gone").mkdir()
    layout = make_bundle(request, spec, tmp_path / "bundle")
    shutil.copy(BUSYBOX, layout.inputs_dir / "busybox")
    (tmp_path / "gone").rmdir()
    with pytest.raises(BundleError) as failed:
        BwrapRuntime().run(tmp_path / "bundle", "bwrap-test-gone", log=tmp_path / "log",
                           timeout=30)
    assert f"bwrap rejected the bundle: bwrap: Can't find source path {tmp_path}/gone" \
        in str(failed.value), failed.value


def test_a_bundle_below_a_0700_directory_builds(tmp_path: Path, shared_store: LocalStore,
                                                busybox: Node) -> None:
    """pytest's temp dir is 0700: as root, bwrap's user gets the bundle through bwrap_alias."""
    ex = _executor(tmp_path / "bundles", shared_store)
    build = ex.build(_sh(busybox, "echo hi > out; /inputs/busybox id -u >> out",
                         outputs=("build/out",)))
    assert read_blob(ex.store, build.outputs[0].digest) == b"hi\n1000\n"  # type: ignore[union-attr]


def test_unreachable_sources_are_moved_below_the_alias(tmp_path: Path) -> None:
    secret = tmp_path / "secret"  # 0700, and its parents too (pytest's temp dir)
    (secret / "bundle" / "root").mkdir(parents=True)
    (secret / "bundle" / "inputs").mkdir()
    secret.chmod(0o700)
    config = {"root": {"path": "root"}, "mounts": [
        {"destination": "/inputs", "type": "none", "source": "inputs", "options": ["rbind"]},
        {"destination": "/dev/null", "type": "none", "source": "/dev/null", "options": []},
        {"destination": "/proc", "type": "proc", "source": "proc", "options": []}]}
    moved, dirs = aliased(config, secret / "bundle", 906035200, 906035200)
    below = below_unsearchable(str(secret / "bundle" / "root"), 906035200, 906035200)
    assert below is not None and dirs == [below], (dirs, below)
    rest = str(secret / "bundle")[len(below):]
    assert moved["root"]["path"] == f"{ALIAS}/0{rest}/root"
    assert [m["source"] for m in moved["mounts"]] == [f"{ALIAS}/0{rest}/inputs", "/dev/null",
                                                     "proc"]
    owner = os.geteuid()  # owns them all: reaches them all
    assert aliased(config, secret / "bundle", owner, owner) == (config, [])


