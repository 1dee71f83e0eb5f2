# Helpers shared by the corpus; the index of cases is ./default.nix.
#
#   bbdir   a directory holding only a copy of a static busybox, named `busybox`. It is an
#           argument because the binary differs between hosts (Debian releases), and with it
#           every store path of the corpus. A single-file `builtins.path { path = /bin/busybox; }`
#           does not work as the builder: Nix runs it as `<hash>-busybox`, an unknown applet.
#
# Scripts run as `busybox sh -e -c SCRIPT`; Debian's busybox-static finds its applets without
# PATH (PATH is /path-not-set in the sandbox), so `ls`, `cp`, `sed`… work unqualified.
{ bbdir, system ? "x86_64-linux" }:
rec {
  inherit system;
  bb = builtins.path { path = bbdir; name = "busybox-dir"; };
  busybox = "${bb}/busybox";

  # mk NAME SCRIPT ATTRS: a derivation whose builder runs SCRIPT; ATTRS are extra attributes.
  mk = name: script: attrs: derivation ({
    inherit name system;
    builder = busybox;
    args = [ "sh" "-e" "-c" script ];
  } // attrs);

  # fails REGEX DRV: DRV must fail to build; REGEX matches all of Nix's first `error:` line
  # without the `error: ` prefix, the `<drv>.chroot` prefix of paths, and the ` at '<path>'` of
  # missing outputs (tests/nixdiff normalises our reason line the same way). The attribute does
  # not change the derivation.
  fails = error: drv: drv // { expectedError = error; };
}
