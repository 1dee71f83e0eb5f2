# Content-addressed (floating) probes; need --extra-experimental-features ca-derivations.
{ bbdir, system ? "x86_64-linux" }:
let
  bb = builtins.path { path = bbdir; name = "busybox-dir"; };
  mk = name: script: attrs: derivation ({
    inherit name system;
    builder = "${bb}/busybox";
    args = [ "sh" "-c" script ];
  } // attrs);
in rec {
  floating = mk "floating" "echo $out > $out; echo $dev > $dev" {
    __contentAddressed = true; outputs = [ "out" "dev" ];
  };
  floating-flat = mk "floating-flat" "echo x > $out" {
    __contentAddressed = true; outputHashMode = "flat"; outputHashAlgo = "sha1";
  };
  on-floating = mk "on-floating" "cat ${floating.dev} > $out" { };
  on-on-floating = mk "on-on-floating" "cat ${on-floating} > $out" { };
}
