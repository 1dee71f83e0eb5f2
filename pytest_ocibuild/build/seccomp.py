"""The build's seccomp profile: Nix's filter, made an allowlist so newer syscalls cannot slip by.

Nix (``setupSeccomp``) refuses setuid/setgid bits through ``chmod``/``fchmod``/``fchmodat``
(and ``fchmodat2`` since 2.19) with EPERM, and extended attributes and ACLs through
``setxattr``/``lsetxattr``/``fsetxattr`` with ENOTSUP; everything else is allowed. It leaves
``open(O_CREAT, 04755)``, ``mknod`` and the like to its output canonicalisation; our outputs
and caches live on the host, so the bits are refused where they are created too:

- ``open``/``openat``/``creat`` and ``mknod``/``mknodat`` (which makes regular files too) with
  S_ISUID or S_ISGID in the mode fail with EPERM; for ``open``/``openat`` only when the mode
  counts, i.e. with ``O_CREAT`` or ``O_TMPFILE`` (the rules AND the flags and the mode, as
  runc does for conditions on different arguments); ``mkdir``/``mkdirat`` likewise (the
  kernel drops both bits there anyway, a refusal is clearer);
- ``openat2`` (its mode is inside a struct, out of the filter's reach) and io_uring (whose
  ``OPENAT``/``MKDIRAT``/``SETXATTR`` operations run without passing the filter) fail with
  ENOSYS, so libc and runtimes fall back to the filtered calls, as container runtimes do;
- ``setxattrat`` (Linux 6.13) fails with ENOTSUP like the rest of the family;
- ``bpf``, ``userfaultfd``, ``kexec_*``, the module calls and the keyring calls fail with
  EPERM (as in Docker's profile): the kernel answers them for the host, or their state is not
  namespaced (a key one build adds is seen by the next build of the same host uid), and a
  build has no use for them.

runc 1.1 skips every syscall name its libseccomp does not know (a debug-level log line, the
rule silently gone), so with a default of ALLOW a syscall newer than libseccomp's table (here
``setxattrat``, Linux 6.13) stays unfiltered, as it is under Nix's filter, which also allows by
default. ``ALLOWLIST = True`` closes that gap: default ERRNO(ENOSYS) and every name libseccomp
2.5.4-1+deb12u1 knows (Linux 6.7) allowed, so an unknown syscall fails as on a 6.7 kernel.
It is on by default, whatever its cost: runc's init compiles ~450 rules per architecture,
~37 ms of CPU on this 2-CPU VM (1312 BPF instructions for x86_64+x86+x32), +30-45 ms on the
median ``runc run`` (about 55 -> 90 ms), against ~1 ms for the refusals alone
(docs/nix-sandbox.md §8). ``ALLOWLIST = False`` trades that gap for the time: xattrs still
never reach outputs or caches (ingest keeps no mode but the execute bit, cache clones copy no
xattrs, caches.rejected_entry refuses special bits and files).
"""

from __future__ import annotations

import platform
from typing import Any

ALLOWLIST = True  # see above: ~37 ms per container start
EPERM, ENOSYS, ENOTSUP = 1, 38, 95
S_ISUID, S_ISGID = 0o4000, 0o2000
SPECIAL_BITS = S_ISUID | S_ISGID
O_CREAT, O_TMPFILE = 0o100, 0o20000000  # __O_TMPFILE; the same on x86 and arm
CREATE_FLAGS = O_CREAT | O_TMPFILE

# Native architecture plus the compat ones a process could switch to (as Nix adds them).
ARCHES = {"x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
          "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}

# The argument holding the mode, for calls whose every mode counts.
MODE_ARG: dict[str, int] = {
    "chmod": 1, "fchmod": 1, "creat": 1, "mkdir": 1, "mknod": 1,
    "fchmodat": 2, "fchmodat2": 2, "mkdirat": 2, "mknodat": 2,
}
# (flags, mode) arguments of the open calls: the mode counts only with CREATE_FLAGS.
OPEN_ARGS: dict[str, tuple[int, int]] = {"open": (1, 2), "openat": (2, 3)}
XATTR_WRITES: tuple[str, ...] = ("setxattr", "lsetxattr", "fsetxattr", "setxattrat")
REFUSED: tuple[str, ...] = (
    "add_key", "bpf", "delete_module", "finit_module", "init_module", "kexec_file_load",
    "kexec_load", "keyctl", "request_key", "userfaultfd",
)
NOT_IMPLEMENTED: tuple[str, ...] = (
    "openat2", "io_uring_setup", "io_uring_enter", "io_uring_register",
)

# Every syscall name libseccomp 2.5.4-1+deb12u1 resolves on x86_64, x86, x32, aarch64 or arm.
_SYSCALL_NAMES = """
    _llseek _newselect _sysctl accept accept4 access acct add_key adjtimex afs_syscall alarm
    arch_prctl arm_fadvise64_64 arm_sync_file_range bdflush bind bpf break breakpoint brk
    cacheflush cachestat capget capset chdir chmod chown chown32 chroot clock_adjtime
    clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 clock_settime clock_settime64 clone clone3 close
    close_range connect copy_file_range creat create_module delete_module dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2
    fadvise64 fadvise64_64 fallocate fanotify_init fanotify_mark fchdir fchmod fchmodat
    fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr finit_module
    flistxattr flock fork fremovexattr fsconfig fsetxattr fsmount fsopen fspick fstat fstat64
    fstatat64 fstatfs fstatfs64 fsync ftime ftruncate ftruncate64 futex futex_requeue
    futex_time64 futex_wait futex_waitv futex_wake futimesat get_kernel_syms get_mempolicy
    get_robust_list get_thread_area get_tls getcpu getcwd getdents getdents64 getegid getegid32
    geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid
    getpgrp getpid getpmsg getppid getpriority getrandom getresgid getresgid32 getresuid
    getresuid32 getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid
    getuid32 getxattr gtty idle init_module inotify_add_watch inotify_init inotify_init1
    inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64
    io_setup io_submit io_uring_enter io_uring_register io_uring_setup ioctl ioperm iopl
    ioprio_get ioprio_set ipc kcmp kexec_file_load kexec_load keyctl kill landlock_add_rule
    landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen
    listxattr llistxattr lock lookup_dcookie lremovexattr lseek lsetxattr lstat lstat64 madvise
    map_shadow_stack mbind membarrier memfd_create memfd_secret migrate_pages mincore mkdir
    mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 modify_ldt mount mount_setattr
    move_mount move_pages mprotect mpx mq_getsetattr mq_notify mq_open mq_timedreceive
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget
    msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat
    nfsservctl nice oldfstat oldlstat oldolduname oldstat olduname open open_by_handle_at
    open_tree openat openat2 pause pciconfig_iobase pciconfig_read pciconfig_write
    perf_event_open personality pidfd_getfd pidfd_open pidfd_send_signal pipe pipe2 pivot_root
    pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
    prlimit64 process_madvise process_mrelease process_vm_readv process_vm_writev prof profil
    pselect6 pselect6_time64 ptrace putpmsg pwrite64 pwritev pwritev2 query_module quotactl
    quotactl_fd read readahead readdir readlink readlinkat readv reboot recv recvfrom recvmmsg
    recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2 request_key
    restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
    sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
    security select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64
    sendmmsg sendmsg sendto set_mempolicy set_mempolicy_home_node set_robust_list
    set_thread_area set_tid_address set_tls setdomainname setfsgid setfsgid32 setfsuid
    setfsuid32 setgid setgid32 setgroups setgroups32 sethostname setitimer setns setpgid
    setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
    setreuid32 setrlimit setsid setsockopt settimeofday setuid setuid32 setxattr sgetmask shmat
    shmctl shmdt shmget shutdown sigaction sigaltstack signal signalfd signalfd4 sigpending
    sigprocmask sigreturn sigsuspend socket socketcall socketpair splice ssetmask stat stat64
    statfs statfs64 statx stime stty swapoff swapon symlink symlinkat sync sync_file_range
    syncfs sysfs sysinfo syslog tee tgkill time timer_create timer_delete timer_getoverrun
    timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
    timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 tuxcall
    ugetrlimit ulimit umask umount umount2 uname unlink unlinkat unshare uselib userfaultfd
    usr26 usr32 ustat utime utimensat utimensat_time64 utimes vfork vhangup vm86 vm86old
    vmsplice vserver wait4 waitid waitpid write writev
"""
SYSCALLS: tuple[str, ...] = tuple(_SYSCALL_NAMES.split())


def seccomp_profile(machine: str = platform.machine(), *,
                    allowlist: bool = ALLOWLIST) -> dict[str, Any]:
    """The ``linux.seccomp`` object of the spec (see the module docstring).

    ``allowlist=False``: default ALLOW and only the refusals (what runc compiles in ~1 ms),
    leaving calls runc's libseccomp cannot name unfiltered (``setxattrat`` here).
    """
    ruled = {*MODE_ARG, *OPEN_ARGS, *XATTR_WRITES, *REFUSED, *NOT_IMPLEMENTED}
    rules: list[dict[str, Any]] = [
        {"names": [n for n in SYSCALLS if n not in ruled], "action": "SCMP_ACT_ALLOW"},
    ]
    for index in sorted(set(MODE_ARG.values())):
        names = sorted(n for n, i in MODE_ARG.items() if i == index)
        rules.append(_rule(names, "SCMP_ACT_ALLOW", (index, SPECIAL_BITS, 0)))
        rules += [_rule(names, "SCMP_ACT_ERRNO", (index, bit, bit), errno=EPERM)
                  for bit in (S_ISUID, S_ISGID)]
    for name, (flags, mode) in OPEN_ARGS.items():
        rules.append(_rule([name], "SCMP_ACT_ALLOW", (flags, CREATE_FLAGS, 0)))
        rules.append(_rule([name], "SCMP_ACT_ALLOW", (mode, SPECIAL_BITS, 0)))
        rules += [_rule([name], "SCMP_ACT_ERRNO", (flags, flag, flag), (mode, bit, bit),
                        errno=EPERM)
                  for flag in (O_CREAT, O_TMPFILE) for bit in (S_ISUID, S_ISGID)]
    rules.append({"names": list(XATTR_WRITES), "action": "SCMP_ACT_ERRNO", "errnoRet": ENOTSUP})
    rules.append({"names": list(REFUSED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})
    rules.append({"names": list(NOT_IMPLEMENTED), "action": "SCMP_ACT_ERRNO",
                  "errnoRet": ENOSYS})
    arches = ARCHES.get(machine, [])
    if not allowlist:
        refusals = [r for r in rules if r["action"] != "SCMP_ACT_ALLOW"]
        return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": arches,
                "syscalls": refusals}
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": ENOSYS,
            "architectures": arches, "syscalls": rules}


def _rule(names: list[str], action: str, *conditions: tuple[int, int, int],
          errno: int | None = None) -> dict[str, Any]:
    """A rule matching when every ``(index, mask, value)`` holds: ``arg & mask == value``."""
    rule: dict[str, Any] = {"names": names, "action": action}
    if errno is not None:
        rule["errnoRet"] = errno
    rule["args"] = [{"index": i, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}
                    for i, mask, value in conditions]
    return rule
