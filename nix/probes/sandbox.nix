# Sandbox probes: what a builder sees inside Nix 2.8's sandbox, and how failures are reported.
# Build one with (see docs/nix-sandbox.md):
#   NIX_REMOTE= nix-build --option sandbox true --option substituters '' sandbox.nix \
#     --arg bbdir /path/to/dir-containing-busybox -A inspect
{ bbdir, system ? "x86_64-linux" }:
let
  bb = builtins.path { path = bbdir; name = "busybox-dir"; };
  B = "${bb}/busybox";
  mk = name: script: attrs: derivation ({
    inherit name system;
    builder = B;
    args = [ "sh" "-c" script ];
  } // attrs);
  # Writes a report of the environment to stdout; $1 = where to write it.
  report = ''
    B=${B}
    r() { echo "=== $*"; "$@" 2>&1; echo "--- rc=$?"; }
    echo "=== env"; $B env; echo "=== set -o / argv0: $0"
    r $B id
    r $B hostname
    r $B uname -a
    r $B cat /etc/passwd /etc/group /etc/hosts
    r $B ls -la / /dev /dev/shm /dev/pts /build /nix /nix/store /tmp /etc /bin /proc/sys/kernel/hostname
    r $B ls -lan /build /nix/store
    r $B stat -c '%n mode=%a owner=%u:%g' / /build /nix/store /tmp /etc /dev /proc ${bb} ${B}
    r $B touch /nix/store/x
    r $B ls -la /nix/store/x
    r $B rm /nix/store/x
    r $B touch ${bb}/x
    r $B touch /tmp/x
    r $B touch /x
    r $B cat /proc/self/mountinfo
    echo "=== ulimit -a"; ulimit -a
    echo "=== cwd: $(pwd) umask: $(umask)"
    r $B cat /proc/self/status
    r $B cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups
    r $B ls -la /proc/self/fd/
    r $B readlink /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2
    r $B ip addr
    r $B cat /etc/resolv.conf /etc/nsswitch.conf
    r $B nproc
    r $B cat /proc/self/cgroup
    r $B df
  '';
in rec {
  inspect = mk "inspect" "(${report}) > $out 2>&1; echo second > $second" {
    passAsFile = [ "big" ]; big = "contents of big\n"; custom = "x";
    outputs = [ "out" "second" ];
    preferLocalBuild = true;
  } // { };
  # with __structuredAttrs Nix 2.8 sets no output variables: the paths are only in .attrs.*
  inspect-structured = mk "inspect-structured" ''
    B=${B}; out=$($B sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' /build/.attrs.json)
    ( $B ls -la /build; echo "=== env"; $B env
      echo "=== .attrs.json"; $B cat /build/.attrs.json
      echo "=== .attrs.sh"; $B cat /build/.attrs.sh ) > $out
  '' { __structuredAttrs = true; nested = { a = [ 1 "x" ]; }; passAsFile = [ "nested" ]; };
  # fixed-output: reports on stderr (the build log), produces "hello\n"
  inspect-fixed = mk "inspect-fixed" "(${report}) >&2; echo hello > $out" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    impureEnvVars = [ "PROBE_IMPURE" "http_proxy" ];
  };
  # output canonicalisation: modes, timestamps, owners, hard links, setuid, symlinks
  perms = mk "perms" ''
    B=${B}
    $B mkdir -p $out/dir/sub $out/private
    echo a > $out/file; $B chmod 600 $out/file
    echo b > $out/exec; $B chmod 750 $out/exec
    echo c > $out/group-writable; $B chmod 664 $out/group-writable
    $B chmod 700 $out/private; $B chmod 777 $out/dir
    $B ln -s file $out/link; $B ln -s /nonexistent $out/broken
    $B ln $out/file $out/hardlink
    $B touch -d '2001-01-01 00:00:00' $out/file
  '' { };
  setuid = mk "setuid" "echo x > $out; ${B} chmod 4755 $out" { };
  fifo = mk "fifo" "${B} mkdir $out; ${B} mkfifo $out/fifo" { };
  # failures
  exit3 = mk "exit3" "echo about to fail; exit 3" { };
  no-output = mk "no-output" "echo not writing out" { };
  missing-second = mk "missing-second" "echo > $out" { outputs = [ "out" "second" ]; };
  hash-mismatch = mk "hash-mismatch" "echo wrong > $out" {
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=";
  };
  simple = mk "simple" "echo simple > $out" { };
  refers = mk "refers" "echo ${simple} > $out" { };
  allowed-refs = mk "allowed-refs" "echo ${simple} > $out" { allowedReferences = [ ]; };
  allowed-refs-ok = mk "allowed-refs-ok" "echo ${simple} > $out" { allowedReferences = [ simple ]; };
  disallowed-refs = mk "disallowed-refs" "echo ${simple} > $out" { disallowedReferences = [ simple ]; };
  allowed-requisites = mk "allowed-requisites" "echo ${refers} > $out" {
    allowedRequisites = [ refers ];
  };
  self-ref = mk "self-ref" "echo $out > $out" { };
  unsupported-system = derivation {
    name = "unsupported-system"; system = "riscv64-none"; builder = B; args = [ "sh" "-c" "true" ];
  };
  required-features = mk "required-features" "echo > $out" {
    requiredSystemFeatures = [ "gpu-nonexistent" ];
  };
  cycle = mk "cycle" "echo $b > $out; echo $out > $b" { outputs = [ "out" "b" ]; };
  fixed-with-ref = mk "fixed-with-ref" "echo ${simple} > $out" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "0000000000000000000000000000000000000000000000000000000000000000";
  };
  dir-flat-fixed = mk "dir-flat-fixed" "${B} mkdir $out" {
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=";
  };
  builder-missing = derivation {
    name = "builder-missing"; inherit system; builder = "/nonexistent/sh";
  };
  # the builder is PID 1 of its PID namespace: "kill -9 $$" is ignored and the build goes on
  killed = mk "killed" "kill -9 $$" { };
  killed-child = mk "killed-child" "${B} sh -c 'kill -9 $$'; exit $?" { };
  stdin = mk "stdin" "${B} cat > $out" { };
  network = mk "network" "${B} nc -w 2 10.255.255.53 53 < /dev/null > $out 2>&1; echo rc=$? >> $out" { };
  rec-fixed-with-ref = mk "rec-fixed-with-ref" "echo ${simple} > $out" {
    outputHashMode = "recursive";
    outputHash = "sha256-BDUJA52nOxM+g8zqWCUQDIEFessqmssMhJdkRkyMwBM=";
  };
}
