"""What a hostile build tries from inside the sandbox, and what stops it.

Each attack runs in a real runc build (both input providers) through ``probe.c``, which prints
the errno the kernel answered; the build itself succeeds, so the test reads exactly what the
build saw. Where the answer comes from:

- capabilities (none held, ``no_new_privs``): mknod, mount, raw sockets, setuid, chroot,
  kexec, modules, reboot, the clock;
- namespaces (pid, net, mount, user, ipc, uts): host processes cannot be named, the host's
  loopback cannot be reached, orphans die with the build;
- ownership and read-only mounts: /etc, /proc/sys, inputs;
- seccomp (build/seccomp.py), stronger than Nix's filter: bpf, userfaultfd and the keyring
  syscalls, whose state is not namespaced (a key added by one build would be seen by the next
  build running as the same host uid).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.castore.nodes import FileNode, Node
from pytest_ocibuild.castore.store import put_blob, read_blob

pytestmark = pytest.mark.runc

REFUSED = {
    "mknod-char": {"EPERM"},
    "mount-tmpfs": {"EPERM"},
    "remount-root": {"EPERM"},
    "sysctl-write": {"EACCES"},
    "raw-socket": {"EPERM"},
    "packet-socket": {"EPERM"},
    "ptrace-host-init": {"ESRCH"},
    "kexec-load": {"EPERM"},
    "kexec-file-load": {"EPERM"},
    "bpf": {"EPERM"},
    "userfaultfd": {"EPERM"},
    "add-key": {"EPERM"},
    "keyctl": {"EPERM"},
    "request-key": {"EPERM"},
    "setuid-0": {"EPERM"},
    "chroot": {"EPERM"},
    "kill-host": {"ESRCH"},
    "write-etc": {"EACCES"},
    "create-etc": {"EACCES"},
    "write-input": {"EROFS", "EACCES"},
    "create-input": {"EROFS", "EACCES"},
    "reboot": {"EPERM"},
    "init-module": {"EPERM"},
    "set-clock": {"EPERM"},
}


def run_probe(executor: Executor, busybox: Node, probe: Node, *attacks: str) -> dict[str, str]:
    target = FileNode(put_blob(executor.store, b"input\n"), 6)
    build = executor.build(BuildRequest(
        inputs={"busybox": busybox, "probe": probe, "target": target},
        command_args=("/inputs/busybox", "sh", "-c",
                      "cp /inputs/target /dev/null; /inputs/probe " + " ".join(attacks)
                      + " > out"),
        outputs=("build/out",)))
    text = read_blob(executor.store, build.outputs[0].digest).decode()  # type: ignore[union-attr]
    return dict(line.split(" ", 1) for line in text.splitlines())


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_an_attack_is_refused(
    executor: Executor, busybox: Node, probe: Node, attack: str,
) -> None:
    seen = run_probe(executor, busybox, probe, attack)
    assert seen[attack] in REFUSED[attack], f"{attack}: the build saw {seen[attack]}"


def test_the_build_sees_only_its_own_processes(executor: Executor, busybox: Node) -> None:
    build = executor.build(BuildRequest(
        inputs={"busybox": busybox},
        command_args=("/inputs/busybox", "sh", "-c",
                      "/inputs/busybox sleep 5 & ls /proc | /inputs/busybox grep -c '^[0-9]' "
                      "> out; kill %1"),
        outputs=("build/out",)))
    count = int(read_blob(executor.store, build.outputs[0].digest))  # type: ignore[union-attr]
    assert count <= 4, f"the build sees {count} processes"


def test_orphaned_setsid_processes_die_with_the_build(
    executor: Executor, busybox: Node,
) -> None:
    marker = f"ocibuild-orphan-{time.monotonic_ns()}"
    executor.build(BuildRequest(
        inputs={"busybox": busybox},
        command_args=("/inputs/busybox", "sh", "-c",
                      f"/inputs/busybox setsid /inputs/busybox sh -c 'exec -a {marker} "
                      "/inputs/busybox sleep 300' </dev/null >/dev/null 2>&1 & sleep 0.2"),
    ))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if marker not in ps:
            break
        time.sleep(0.1)
    assert marker not in ps, "a process the build detached still runs on the host"


def test_the_host_loopback_is_unreachable(executor: Executor, busybox: Node) -> None:
    """Without network_access the build has its own network namespace: a listener on the
    host's 127.0.0.1 gets no connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        build = executor.build(BuildRequest(
            inputs={"busybox": busybox},
            command_args=("/inputs/busybox", "sh", "-c",
                          f"echo hi | /inputs/busybox nc -w 1 127.0.0.1 {port} "
                          "&& echo CONNECTED > out || echo refused > out"),
            outputs=("build/out",)))
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert read_blob(executor.store, build.outputs[0].digest) == b"refused\n"  # type: ignore[union-attr]
    assert accepted == []


def test_builds_cannot_see_each_others_scratch(executor: Executor, busybox: Node) -> None:
    """A build running at the same time as another finds none of the other's files."""
    secret = f"secret-{time.monotonic_ns()}"
    first = threading.Thread(target=executor.build, args=(BuildRequest(
        inputs={"busybox": busybox},
        command_args=("/inputs/busybox", "sh", "-c",
                      f"echo {secret} > {secret}; /inputs/busybox sleep 2"),
    ),))
    first.start()
    time.sleep(0.8)
    try:
        build = executor.build(BuildRequest(
            inputs={"busybox": busybox},
            command_args=("/inputs/busybox", "sh", "-c",
                          f"/inputs/busybox find / -xdev -name '{secret}*' 2>/dev/null > out;"
                          f" /inputs/busybox grep -rl {secret} /proc/*/cwd/ 2>/dev/null >> out;"
                          " true"),
            outputs=("build/out",)))
    finally:
        first.join()
    assert read_blob(executor.store, build.outputs[0].digest) == b""  # type: ignore[union-attr]
