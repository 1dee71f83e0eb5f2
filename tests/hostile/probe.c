/* Attacks a hostile build would try, one per argument; each prints "NAME ok" when the kernel
 * let it through or "NAME ERRNO-NAME" when it was refused. Compiled statically at test time
 * (tests/hostile/cprobe.py) and given to builds as an input. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc >= 0)
        printf("%s ok\n", name);
    else
        printf("%s %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
}

static long try_bpf(void) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    return syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long rc;
        errno = 0;
        if (!strcmp(a, "mknod-char"))
            rc = mknod("probe-dev", S_IFCHR | 0666, makedev(1, 3));
        else if (!strcmp(a, "mount-tmpfs"))
            rc = mount("none", "/tmp", "tmpfs", 0, NULL);
        else if (!strcmp(a, "remount-root"))
            rc = mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL);
        else if (!strcmp(a, "sysctl-write")) {
            int fd = open("/proc/sys/kernel/hostname", O_WRONLY);
            rc = fd < 0 ? -1 : write(fd, "pwned", 5);
        } else if (!strcmp(a, "raw-socket"))
            rc = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
        else if (!strcmp(a, "packet-socket"))
            rc = socket(AF_PACKET, SOCK_RAW, 0);
        else if (!strcmp(a, "ptrace-host-init"))
            /* pid 1 here is the build's own init; a host pid cannot even be named */
            rc = ptrace(PTRACE_ATTACH, 99999, 0, 0);
        else if (!strcmp(a, "kexec-load"))
            rc = syscall(SYS_kexec_load, 0, 0, NULL, 0);
        else if (!strcmp(a, "kexec-file-load"))
            rc = syscall(SYS_kexec_file_load, -1, -1, 0, "", 0);
        else if (!strcmp(a, "bpf"))
            rc = try_bpf();
        else if (!strcmp(a, "userfaultfd"))
            rc = syscall(SYS_userfaultfd, O_CLOEXEC);
        else if (!strcmp(a, "add-key"))
            rc = syscall(SYS_add_key, "user", "probe", "secret", 6, KEY_SPEC_USER_KEYRING);
        else if (!strcmp(a, "keyctl"))
            rc = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0);
        else if (!strcmp(a, "request-key"))
            rc = syscall(SYS_request_key, "user", "probe", NULL, 0);
        else if (!strcmp(a, "setuid-0"))
            rc = setuid(0);
        else if (!strcmp(a, "chroot"))
            rc = chroot("/tmp");
        else if (!strcmp(a, "kill-host"))
            rc = kill(-1, 0) == 0 && kill(99999, 0) == 0 ? 0 : -1;
        else if (!strcmp(a, "write-etc")) {
            int fd = open("/etc/passwd", O_WRONLY | O_APPEND);
            rc = fd < 0 ? -1 : write(fd, "x\n", 2);
        } else if (!strcmp(a, "create-etc"))
            rc = open("/etc/probe", O_WRONLY | O_CREAT, 0644);
        else if (!strcmp(a, "write-input")) {
            int fd = open("/inputs/probe", O_WRONLY | O_APPEND);
            rc = fd < 0 ? -1 : write(fd, "x", 1);
        } else if (!strcmp(a, "create-input"))
            rc = open("/inputs/new", O_WRONLY | O_CREAT, 0644);
        else if (!strcmp(a, "reboot"))
            rc = syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, NULL);
        else if (!strcmp(a, "init-module"))
            rc = syscall(SYS_init_module, NULL, 0, "");
        else if (!strcmp(a, "set-clock")) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            rc = clock_settime(CLOCK_REALTIME, &now);
        }
        else {
            printf("%s unknown-probe\n", a);
            continue;
        }
        report(a, rc);
    }
    return 0;
}
