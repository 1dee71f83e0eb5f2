# Floating content-addressed derivations (__contentAddressed; needs the experimental feature
# ca-derivations, e.g. NIX_CONFIG='experimental-features = nix-command ca-derivations'). The
# output path is known only after the build: a hash of the output with self-references masked.
{ lib }:
let inherit (lib) mk; ca = { __contentAddressed = true; }; in
rec {
  # no references
  floating = mk "ca-floating" "echo floating > $out" ca;
  # a self-reference, rewritten to the final path
  self-ref = mk "ca-self-ref" "mkdir $out; echo $out > $out/self; ln -s $out/self $out/link" ca;
  # two outputs, dev referring to out
  multi = mk "ca-multi" "echo out > $out; echo $out > $dev" (ca // { outputs = [ "out" "dev" ]; });
  # flat mode, sha1
  flat = mk "ca-flat" "echo flat > $out" (ca // { outputHashMode = "flat"; outputHashAlgo = "sha1"; });
  # input-addressed consumer of a floating output (its own output path is deferred)
  on-floating = mk "ca-on-floating" "cat ${self-ref}/self > $out; echo ${multi.dev} >> $out" { };
  # floating consumer of a floating output
  ca-on-ca = mk "ca-on-ca" "cat ${multi.dev} > $out; echo ${floating} >> $out" ca;
}
