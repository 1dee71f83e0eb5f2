"""setuid/setgid bits, extended attributes and special files: refused inside the build
(build/seccomp.py) and, as a second line, when a cache clone is committed or an output is
ingested. Real runc builds run ``bits``, a static C program (source below, compiled with gcc
for the session) making one raw syscall per run, so no libc fallback hides what the filter
answered."""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build.caches import CacheStore
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.request import BuildRequest, CacheMount
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.build.seccomp import (
    MODE_ARG,
    NOT_IMPLEMENTED,
    OPEN_ARGS,
    REFUSED,
    SYSCALLS,
    XATTR_WRITES,
    seccomp_profile,
)
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import read_blob
from pytest_ocibuild.castore.trees import tree_dict
from pytest_ocibuild.errors import BuildFailed

BITS_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* x86_64 numbers: the host's headers may predate them */
#define NR_io_uring_setup 425
#define NR_openat2 437
#define NR_fchmodat2 452
#define NR_setxattrat 463

struct open_how { unsigned long long flags, mode, resolve; };
struct xattr_args { unsigned long long value; unsigned int size, flags; };

static long run(const char *op, const char *p, unsigned m) {
    if (!strcmp(op, "open")) return syscall(SYS_open, p, O_CREAT | O_WRONLY, m);
    if (!strcmp(op, "open-nocreat")) return syscall(SYS_open, p, O_RDONLY, m);
    if (!strcmp(op, "openat")) return syscall(SYS_openat, AT_FDCWD, p, O_CREAT | O_WRONLY, m);
    if (!strcmp(op, "creat")) return syscall(SYS_creat, p, m);
    if (!strcmp(op, "tmpfile")) return syscall(SYS_openat, AT_FDCWD, p, O_TMPFILE | O_WRONLY, m);
    if (!strcmp(op, "openat2")) {
        struct open_how how = {O_CREAT | O_WRONLY, m, 0};
        return syscall(NR_openat2, AT_FDCWD, p, &how, sizeof how);
    }
    if (!strcmp(op, "mkdir")) return syscall(SYS_mkdir, p, m);
    if (!strcmp(op, "mkdirat")) return syscall(SYS_mkdirat, AT_FDCWD, p, m);
    if (!strcmp(op, "mknod")) return syscall(SYS_mknod, p, S_IFREG | m, 0);
    if (!strcmp(op, "mknodat")) return syscall(SYS_mknodat, AT_FDCWD, p, S_IFREG | m, 0);
    if (!strcmp(op, "chmod")) return syscall(SYS_chmod, p, m);
    if (!strcmp(op, "fchmodat")) return syscall(SYS_fchmodat, AT_FDCWD, p, m);
    if (!strcmp(op, "fchmodat2")) return syscall(NR_fchmodat2, AT_FDCWD, p, m, 0);
    if (!strcmp(op, "fchmod")) {
        int fd = open(p, O_RDONLY);
        return fd < 0 ? -1 : syscall(SYS_fchmod, fd, m);
    }
    if (!strcmp(op, "setxattr")) return syscall(SYS_setxattr, p, "user.x", "1", 1, 0);
    if (!strcmp(op, "lsetxattr")) return syscall(SYS_lsetxattr, p, "user.x", "1", 1, 0);
    if (!strcmp(op, "fsetxattr")) {
        int fd = open(p, O_RDONLY);
        return fd < 0 ? -1 : syscall(SYS_fsetxattr, fd, "user.x", "1", 1, 0);
    }
    if (!strcmp(op, "setxattrat")) {
        struct xattr_args a = {(unsigned long long)(unsigned long)"1", 1, 0};
        return syscall(NR_setxattrat, AT_FDCWD, p, 0, "user.x", &a, sizeof a);
    }
    if (!strcmp(op, "io_uring")) {
        char params[120] = {0};
        return syscall(NR_io_uring_setup, 4, params);
    }
    if (!strcmp(op, "socket")) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        strncpy(a.sun_path, p, sizeof a.sun_path - 1);
        return fd < 0 ? -1 : bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    errno = EINVAL;
    return -1;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: bits OP PATH OCTAL-MODE\n"); return 64; }
    umask(0);
    long r = run(argv[1], argv[2], (unsigned)strtoul(argv[3], 0, 8));
    printf("%s %s %s %s\n", argv[1], argv[2], argv[3], r < 0 ? strerrorname_np(errno) : "ok");
    return 0;
}
"""

CREATE_OPS = ("open", "openat", "creat", "mknod", "mknodat", "mkdir", "mkdirat")
CHMOD_OPS = ("chmod", "fchmod", "fchmodat", "fchmodat2")
XATTR_OPS = ("setxattr", "lsetxattr", "fsetxattr")


@pytest.fixture(scope="session")
def bits_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BITS_C built with ``gcc -static`` (.ci/setup installs gcc and libc6-dev)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: apt-get install gcc libc6-dev (.ci/setup does)")
    d = tmp_path_factory.mktemp("bits")
    (d / "bits.c").write_text(BITS_C)
    done = subprocess.run([cc, "-static", "-O1", "-o", str(d / "bits"), str(d / "bits.c")],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot compile bits.c: {done.stderr}"
    return d / "bits"


def _script(d: str) -> str:
    """Shell lines trying every way to a special bit below directory ``d``."""
    b = "/inputs/bits"
    lines = [f"mkdir -p {d}", f"touch {d}/t", f"mkdir {d}/sub"]
    for op in CREATE_OPS:
        lines += [f"{b} {op} {d}/u-{op} 4755", f"{b} {op} {d}/g-{op} 2755",
                  f"{b} {op} {d}/ok-{op} 1755"]
    lines += [f"{b} tmpfile {d} 4755", f"{b} tmpfile {d} 2755", f"{b} tmpfile {d} 0644",
              f"{b} openat2 {d}/o2 0644", f"{b} open-nocreat {d}/t 4755", f"{b} io_uring . 0"]
    for op in CHMOD_OPS:
        lines += [f"{b} {op} {d}/t 4755", f"{b} {op} {d}/t 2755", f"{b} {op} {d}/t 0700"]
    lines += [f"{b} chmod {d}/sub 2755"]
    lines += [f"{b} {op} {d}/t 0" for op in (*XATTR_OPS, "setxattrat")]
    lines += [f"chmod u+s {d}/t 2>/dev/null || echo 'chmod-u+s refused'",
              f"chmod g+s {d}/sub 2>/dev/null || echo 'chmod-g+s refused'"]
    return "\n".join(lines)


def _expected(d: str) -> dict[str, str | set[str]]:
    out: dict[str, str | set[str]] = {}
    for op in CREATE_OPS:
        out[f"{op} {d}/u-{op} 4755"] = out[f"{op} {d}/g-{op} 2755"] = "EPERM"
        out[f"{op} {d}/ok-{op} 1755"] = "ok"
    out[f"tmpfile {d} 4755"] = out[f"tmpfile {d} 2755"] = "EPERM"
    out[f"tmpfile {d} 0644"] = "ok"
    out[f"openat2 {d}/o2 0644"] = "ENOSYS"  # libc falls back to openat, which is filtered
    out[f"open-nocreat {d}/t 4755"] = "ok"  # the mode is ignored without O_CREAT/O_TMPFILE
    out["io_uring . 0"] = "ENOSYS"
    for op in CHMOD_OPS:
        out[f"{op} {d}/t 4755"] = out[f"{op} {d}/t 2755"] = "EPERM"
        out[f"{op} {d}/t 0700"] = "ok"
    out[f"chmod {d}/sub 2755"] = "EPERM"
    for op in XATTR_OPS:
        out[f"{op} {d}/t 0"] = "EOPNOTSUPP"
    # ENOTSUP where runc's libseccomp knows the name; ENOSYS (the profile's default) where
    # it does not (libseccomp 2.5.4 here: the rule is skipped, the default answers)
    out[f"setxattrat {d}/t 0"] = {"EOPNOTSUPP", "ENOSYS"}
    return out


def _check_answers(log: str, d: str) -> None:
    answers = {}
    for line in log.splitlines():
        if line.count(" ") == 3:
            op, path, mode, answer = line.split(" ")
            answers[f"{op} {path} {mode}"] = answer
    for key, want in _expected(d).items():
        assert key in answers, f"no answer for {key!r} in:\n{log}"
        assert answers[key] in (want if isinstance(want, set) else {want}), (key, answers[key])
    assert "chmod-u+s refused" in log and "chmod-g+s refused" in log


def _special(root: Path) -> list[str]:
    """Entries below ``root`` (host side, no symlink followed) with a setuid/setgid bit."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(f"{os.path.join(dirpath, name)} {stat.S_IMODE(st.st_mode):o}")
    return found


@pytest.mark.runc
def test_special_bits_are_refused_inside_the_build(
    executor: Executor, busybox: Node, bits_binary: Path
) -> None:
    bits = ingest_path(executor.store, bits_binary)
    script = _script("out") + "\nstat -c 'mode of t: %a' out/t; find out -perm +6000 > found"
    build = executor.build(BuildRequest(
        inputs={"busybox": busybox, "bits": bits},
        command_args=("/inputs/busybox", "sh", "-c", script),
        outputs=("build/found", "build/out")))
    log = Path(build.log_path or "").read_text()
    _check_answers(log, "out")
    assert "mode of t: 700\n" in log
    found, out = build.outputs
    assert read_blob(executor.store, found.digest) == b""  # type: ignore[union-attr]
    tree = tree_dict(executor.store, out)
    assert not [p for p in tree if p.startswith(("u-", "g-"))], sorted(tree)
    assert {f"ok-{op}" for op in CREATE_OPS} <= set(tree)


@pytest.fixture
def cache_executor(tmp_path: Path, shared_store: LocalStore) -> Iterator[Executor]:
    """An Executor with persistent caches in ``tmp_path/caches``; no container left."""
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed (apt-get install runc; .ci/setup does)")
    runtime = RuncRuntime("runc", state_dir=tmp_path / "runc-state")
    ex = Executor(shared_store, inputs=open_input_provider("materialize"), runtime=runtime,
                  bundle_root=tmp_path / "bundles", caches=CacheStore(tmp_path / "caches"))
    yield ex
    left = runtime.list()
    runtime.purge("")
    assert left == [], f"containers left behind: {left}"


def _cache_build(busybox: Node, bits: Node, script: str) -> BuildRequest:
    return BuildRequest(inputs={"busybox": busybox, "bits": bits},
                        command_args=("/inputs/busybox", "sh", "-c", script),
                        caches=(CacheMount("c", "cache"),))


@pytest.mark.runc
def test_no_special_bit_reaches_a_cache(cache_executor: Executor, busybox: Node,
                                        bits_binary: Path) -> None:
    bits = ingest_path(cache_executor.store, bits_binary)
    build = cache_executor.build(_cache_build(busybox, bits, _script("/cache/d")))
    _check_answers(Path(build.log_path or "").read_text(), "/cache/d")
    caches = cache_executor.caches
    assert caches is not None and caches.generation("c") == 1  # committed: nothing to refuse
    snap = caches.snapshot("c")
    assert snap is not None and (snap / "d" / "t").is_file()
    assert _special(snap) == []
    assert os.listxattr(snap / "d" / "t") == []


@pytest.mark.runc
@pytest.mark.parametrize(("make", "kind"), [
    ("mkfifo /cache/sub/pipe", "a fifo"),
    ("/inputs/bits socket /cache/sub/pipe 0", "a socket"),
])
def test_a_cache_with_a_special_file_is_not_committed(
    cache_executor: Executor, busybox: Node, bits_binary: Path, make: str, kind: str
) -> None:
    bits = ingest_path(cache_executor.store, bits_binary)
    caches = cache_executor.caches
    assert caches is not None
    cache_executor.build(_cache_build(busybox, bits, "echo 1 > /cache/n"))
    with pytest.raises(BuildFailed) as failed:
        cache_executor.build(_cache_build(busybox, bits, f"mkdir /cache/sub; {make}; echo 2 > "
                                                         "/cache/n"))
    assert failed.value.reason == "output-rejected"
    assert failed.value.message == (
        f"cache 'c': sub/pipe is {kind}, which a cache may not keep (the cache was not "
        "updated)")
    snap = caches.snapshot("c")
    assert caches.generation("c") == 1 and snap is not None
    assert sorted(os.listdir(snap)) == ["n"] and (snap / "n").read_text() == "1\n"
    assert os.listdir(snap.parent / "clones") == []


def test_a_cache_clone_with_a_setuid_file_is_not_committed(tmp_path: Path) -> None:
    """The second line on its own: bits the filter would have refused, made by the host."""
    caches = CacheStore(tmp_path)
    for mode, what in ((0o4755, "setuid"), (0o2711, "setgid")):
        with caches.use("c") as clone:
            (clone.path / "d").mkdir()
            (clone.path / "d" / "f").write_text("x")
            os.chmod(clone.path / "d" / "f", mode)
            with pytest.raises(BuildFailed) as failed:
                clone.commit()
            assert failed.value.reason == "output-rejected"
            assert failed.value.message == (
                f"cache 'c': d/f is a file with the {what} bit (mode {mode:o}), which a cache "
                "may not keep (the cache was not updated)")
        assert caches.generation("c") == 0
    with caches.use("c") as clone:  # a setgid directory (inherited from a setgid parent) stays
        (clone.path / "d").mkdir()
        os.chmod(clone.path / "d", 0o2755)
        os.symlink("/usr/bin/passwd", clone.path / "d" / "setuid-target")  # not followed
        assert clone.commit()
    assert caches.generation("c") == 1


@pytest.mark.runc
def test_a_fifo_in_an_output_is_rejected(executor: Executor, busybox: Node) -> None:
    with pytest.raises(BuildFailed) as failed:
        executor.build(BuildRequest(
            inputs={"busybox": busybox},
            command_args=("/inputs/busybox", "sh", "-c", "mkdir -p out/sub; mkfifo out/sub/p"),
            outputs=("build/out",)))
    assert failed.value.reason == "output-rejected"
    assert "'build/out'" in failed.value.message and "sub/p" in failed.value.message
    assert "a fifo" in failed.value.message


def test_profile_allows_every_syscall_this_libseccomp_knows_but_the_ruled_ones() -> None:
    """SYSCALLS must name all this host's libseccomp can (else those fail with ENOSYS)."""
    lib = ctypes.CDLL("libseccomp.so.2")  # runc's own dependency
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_char_p
    known = set()
    for arch, base in (("x86_64", 0), ("x86", 0), ("x32", 0x40000000)):
        token = lib.seccomp_arch_resolve_name(arch.encode())
        for nr in range(base, base + 1024):
            name = lib.seccomp_syscall_resolve_num_arch(token, nr)
            if name:
                known.add(name.decode())
    assert "fchmodat2" in known  # Debian's libseccomp 2.5.4-1+deb12u1 (Linux 6.7 names)
    assert sorted(known - set(SYSCALLS)) == []
    profile = seccomp_profile("x86_64")
    allowed = set(profile["syscalls"][0]["names"])
    ruled = {*MODE_ARG, *OPEN_ARGS, *XATTR_WRITES, *REFUSED, *NOT_IMPLEMENTED}
    assert allowed == set(SYSCALLS) - ruled and ruled - {"setxattrat"} <= known
    assert (profile["defaultAction"], profile["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 38)
