# Builds Nix refuses or fails, each with the `error:` line Nix prints (a regex; see lib.fails). Reference-constraint and fixed-output failures live next to their passing
# twins in attrs.nix and fixed.nix.
{ lib }:
let
  inherit (lib) mk fails busybox system;
  drv = name: "'/nix/store/[a-z0-9]{32}-${name}.drv'";
  features = "\\{[a-z, -]*\\}";
in
rec {
  # the builder exits with status 3 after printing to the log
  exit3 = fails "builder for ${drv "fail-exit3"} failed with exit code 3"
    (mk "fail-exit3" "echo about to fail; echo to stderr >&2; exit 3" { });
  # a command fails under `sh -e`
  exit-false = fails "builder for ${drv "fail-false"} failed with exit code 1"
    (mk "fail-false" "echo x > $out; false; echo unreachable" { });
  # a child killed by SIGKILL, its status passed on (128 + 9)
  killed-child = fails "builder for ${drv "fail-killed-child"} failed with exit code 137"
    (mk "fail-killed-child" "sh -c 'kill -9 $$'; exit $?" { });
  # a long log: Nix prints all of it, ours at least the tail
  long-log = fails "builder for ${drv "fail-long-log"} failed with exit code 2"
    (mk "fail-long-log" "for i in $(seq 1 2000); do echo log line $i; done; exit 2" { });
  # the builder succeeds without creating $out
  no-output = fails "builder for ${drv "fail-no-output"} failed to produce output path for output 'out'"
    (mk "fail-no-output" "echo not writing out" { });
  # the second of two outputs is missing
  missing-second = fails "builder for ${drv "fail-missing-second"} failed to produce output path for output 'second'"
    (mk "fail-missing-second" "echo > $out" { outputs = [ "out" "second" ]; });
  # two outputs referring to each other
  cycle = fails "cycle detected in build of ${drv "fail-cycle"} in the references of output '(b|out)' from output '(b|out)'"
    (mk "fail-cycle" "echo $b > $out; echo $out > $b" { outputs = [ "out" "b" ]; });
  # an output that is a FIFO
  fifo = fails "file '/nix/store/[a-z0-9]{32}-fail-fifo/fifo' has an unsupported type"
    (mk "fail-fifo" "mkdir $out; mkfifo $out/fifo" { });
  # a world-writable output root (Nix 2.8 registerOutputs rejects group/world-writable ones)
  world-writable = fails "suspicious ownership or permission on '.*-fail-world-writable' for output 'out'; rejecting this build output"
    (mk "fail-world-writable" "mkdir $out; chmod 777 $out" { });
  # a system this machine is not
  unsupported-system = fails "a 'riscv64-none' with features \\{\\} is required to build ${drv "fail-unsupported-system"}, but I am a '${system}' with features ${features}"
    (derivation { name = "fail-unsupported-system"; system = "riscv64-none"; builder = busybox;
                  args = [ "sh" "-c" "echo > $out" ]; });
  # a system feature this machine lacks
  required-features = fails "a '${system}' with features \\{gpu-nonexistent\\} is required to build ${drv "fail-required-features"}, but I am a '${system}' with features ${features}"
    (mk "fail-required-features" "echo > $out" { requiredSystemFeatures = [ "gpu-nonexistent" ]; });
  # a builder that does not exist
  builder-missing = fails "builder for ${drv "fail-builder-missing"} failed with exit code 1"
    (derivation { name = "fail-builder-missing"; inherit system; builder = "/nonexistent/sh"; });
  # a dependency fails: Nix reports the dependency's builder first
  dependency = fails "builder for ${drv "fail-exit3"} failed with exit code 3"
    (mk "fail-dependency" "cat ${exit3} > $out" { });
}
