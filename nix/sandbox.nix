# The sandbox as a builder sees it (docs/nix-sandbox.md). Each case writes what it observes into
# $out, so any difference in what our executor shows a builder changes the NAR hash; the tree
# diff then shows which line differs. Host-specific facts (kernel, host uids, device numbers of
# the host filesystem, mount options) are left out; facts Nix takes from the host (CPU count,
# /dev/kvm, the capability bounding set) stay in, since our executor must show the same.
{ lib }:
let inherit (lib) mk bb busybox; in
{
  # the environment, sorted (values with newlines are not used here; see attrs.odd-env)
  env = mk "sandbox-env" "env | sort > $out" { custom = "value"; };

  # who and where the builder is: ids, pid 1, argv[0], hostname, cwd, umask, stdin, core limit
  identity = mk "sandbox-identity" ''
    {
      id; echo "pid=$$"; echo "argv0=$0"
      grep PPid /proc/$$/status
      echo "comm=$(cat /proc/1/comm)"
      echo "hostname=$(hostname) uname-n=$(uname -n)"
      echo "kernel.hostname=$(cat /proc/sys/kernel/hostname)"
      echo "kernel.domainname=$(cat /proc/sys/kernel/domainname)"
      echo "cwd=$(pwd) umask=$(umask)"
      echo "stdin=$(readlink /proc/self/fd/0)"
      if [ -t 0 ]; then echo stdin-tty; else echo stdin-not-tty; fi
      echo "ulimit-core=$(ulimit -c)"
      echo "nproc=$(nproc)"
    } > $out
  '' { };

  # /proc/self: credentials, capabilities, no_new_privs, seccomp, id maps (inner side only)
  proc = mk "sandbox-proc" ''
    {
      grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status
      echo "uid_map: $(awk '{print $1, $3}' /proc/self/uid_map)"
      echo "gid_map: $(awk '{print $1, $3}' /proc/self/gid_map)"
      echo "setgroups: $(cat /proc/self/setgroups)"
      echo "personality: $(cat /proc/self/personality)"
      echo "fds: $(ls /proc/self/fd | tr '\n' ' ')"
      echo "cgroup-ns: $(if [ -r /proc/self/ns/cgroup ]; then echo present; fi)"
    } > $out
  '' { };

  # the root filesystem: names, types, modes and owners of the top-level paths and /etc
  fs = mk "sandbox-fs" ''
    {
      echo "/: $(ls -A / | tr '\n' ' ')"
      echo "/etc: $(ls -A /etc | tr '\n' ' ')"
      echo "/tmp: $(ls -A /tmp | tr '\n' ' ')"
      echo "/build: $(ls -A /build | tr '\n' ' ')"
      echo "/nix: $(ls -A /nix | tr '\n' ' ')"
      echo "/nix/store: $(ls -A /nix/store | tr '\n' ' ')"
      stat -c '%n %F %a %u:%g' / /build /dev /etc /nix /nix/store /proc /tmp /etc/* ${bb} ${busybox}
      for f in /etc/*; do echo "== $f"; cat $f; done
      if [ -e "$HOME" ]; then echo "HOME exists"; else echo "HOME missing"; fi
      [ -e /bin/sh ] && echo "/bin/sh exists" || echo "no /bin/sh"
    } > $out
  '' { };

  # /dev: names, types, modes, owners, device numbers and symlink targets
  dev = mk "sandbox-dev" ''
    {
      echo "/dev: $(ls -A /dev | tr '\n' ' ')"
      stat -c '%n %F %a %u:%g %t:%T' /dev/* /dev/pts/* | grep -v '^/dev/pts/[0-9]'
      for f in /dev/*; do [ -L $f ] && echo "$f -> $(readlink $f)"; done
      echo "null: $(echo x > /dev/null && echo ok)"
      echo "zero: $(head -c 4 /dev/zero | od -An -tx1)"
      echo "urandom: $(head -c 16 /dev/urandom | wc -c)"
      echo "full: $(echo x 2>&1 > /dev/full || true)"
    } > $out
  '' { };

  # which paths the build user can write to (files are opened for append, nothing is changed)
  writable = mk "sandbox-writable" ''
    {
      for p in / /build /tmp /nix /nix/store /etc /dev /dev/shm /proc ${bb}; do
        if touch "$p/.w" 2>/dev/null; then echo "$p writable"; rm -f "$p/.w"
        else echo "$p read-only"; fi
      done
      for f in /etc/passwd /etc/hosts ${busybox} /proc/sys/kernel/hostname; do
        if (: >> $f) 2>/dev/null; then echo "$f writable"; else echo "$f read-only"; fi
      done
    } > $out
  '' { };

  # mount points (sources and options are host-specific and left out)
  mounts = mk "sandbox-mounts" "awk '{print $5}' /proc/self/mountinfo | sort > $out" { };

  # network: only lo, and no route out
  network = mk "sandbox-network" ''
    {
      ip -o link | awk '{print $2, $3}'
      ip -o addr | awk '{print $2, $3, $4}'
      nc -w 2 10.255.255.53 53 < /dev/null 2>&1 || echo "nc rc=$?"
    } > $out
  '' { };

  # the builder is PID 1 of its namespace: kill -9 $$ is ignored and the build goes on
  pid1 = mk "sandbox-pid1" "kill -9 $$; echo survived > $out" { };

  # setuid/setgid bits are refused (seccomp); the error and status are recorded
  setuid = mk "sandbox-setuid" ''
    mkdir $out; cd $out; echo x > f; mkdir d
    { chmod 4755 f 2>&1 && echo rc=0 || echo "rc=$?"
      chmod 2755 d 2>&1 && echo rc=0 || echo "rc=$?"
      stat -c '%n %a' f d; } > report
  '' { };

  # a fixed-output build gets NIX_OUTPUT_CHECKED, impureEnvVars from the caller and the host's
  # /etc files; it produces "hello\n" only if all holds (else a hash mismatch; the log says why)
  fixed-output = mk "sandbox-fixed-output" ''
    ok=1
    check() { if ! eval "$1"; then echo "failed: $1" >&2; ok=0; fi; }
    check '[ "$NIX_OUTPUT_CHECKED" = 1 ]'
    check '[ "$OCIBUILD_CORPUS_IMPURE" = from-caller ]'
    check '[ "''${OCIBUILD_CORPUS_UNSET-unset}" = "" ]'
    check '[ -e /etc/resolv.conf ] && [ -e /etc/services ]'
    check '[ "$(cat /etc/nsswitch.conf)" = "$(printf "hosts: files dns\nservices: files")" ]'
    if [ $ok = 1 ]; then echo hello > $out; else env >&2; echo broken > $out; fi
  '' {
    impureEnvVars = [ "OCIBUILD_CORPUS_IMPURE" "OCIBUILD_CORPUS_UNSET" ];
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=";
  };
}
