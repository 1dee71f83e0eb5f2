# Fixed-output derivations: flat and recursive, md5/sha1/sha256/sha512, every hash encoding
# (hex, nixbase32, base64, `algo:` prefix, SRI), and the ways they fail. The output path depends
# only on the hash, the mode and the name, not on the builder.
{ lib }:
let
  inherit (lib) mk fails;
  hello = "echo hello > $out";
  fixed = name: attrs: mk name hello attrs;
  zero256 = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
in
rec {
  flat-sha256 = fixed "fixed-flat-sha256" { outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  flat-sha256-base64 = fixed "fixed-flat-sha256-base64" { outputHashAlgo = "sha256";
    outputHash = "WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; };
  rec-sha256 = fixed "fixed-rec-sha256" { outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"; };
  flat-sha1 = fixed "fixed-flat-sha1" { outputHashAlgo = "sha1";
    outputHash = "iwjz551fyw0cxcjgf4l6c879zabd6wpm"; };
  rec-sha1 = fixed "fixed-rec-sha1" { outputHashMode = "recursive";
    outputHash = "sha1:0deb52c2735eb38d360f976b7b3823c4ad05cce7"; };
  flat-md5 = fixed "fixed-flat-md5" { outputHashAlgo = "md5";
    outputHash = "b1946ac92492d2347c6235b4d2611184"; };
  rec-md5 = fixed "fixed-rec-md5" { outputHashMode = "recursive"; outputHashAlgo = "md5";
    outputHash = "d3ea68e810bc7f9297024c01b858679e"; };
  flat-sha512 = fixed "fixed-flat-sha512" { outputHash =
    "sha512-58IrmUxZ2c8rSOVJseJGZmNgRZMNPafBrLKZ0cO3+TH5Sq5B7dosKyB6NuEPi8uNRSI+VIePWzFufOO2vAGWKQ=="; };
  rec-sha512 = fixed "fixed-rec-sha512" { outputHashMode = "recursive"; outputHashAlgo = "sha512";
    outputHash = "098d9d63b290cc8dff5705019ac0b61fa6ed0b0b1a3d732ef91958c3e5b2d17e8b02b5ed8b01c0526e0e16708adcca96bbf1a906a105927ded24a2236e2a80b0"; };
  # same name and hash as flat-sha256, a builder that writes something else: its output path
  # is valid once flat-sha256 (its input) is built, so Nix does not run this builder
  flat-sha256-valid = mk "fixed-flat-sha256" "test -e ${flat-sha256}; echo other > $out" {
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; };
  # same name and hash as flat-sha256, another builder: the same output path
  flat-sha256-twin = mk "fixed-flat-sha256" "printf 'hello\\n' > $out" {
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; };
  # a recursive hash over a tree with an executable, a symlink and an empty directory
  rec-tree = mk "fixed-rec-tree" ''
    mkdir -p $out/empty $out/bin; echo data > $out/data
    printf '#!/bin/sh\n' > $out/bin/run; chmod 755 $out/bin/run; ln -s ../data $out/bin/link
  '' { outputHashMode = "recursive";
       outputHash = "sha256-+WmgXzu4NwdkhrMW3FSjmWvDU0lSgvpusQAJXy7kjaQ="; };
  # a recursive hash over a symlink
  rec-symlink = mk "fixed-rec-symlink" "ln -s /some/where $out" {
    outputHashMode = "recursive"; outputHash = "sha256-bBhZpiZSfYRoBjEiRX7RjtRJfOHSwvp/Y2sumR6DH/Q="; };

  # hash mismatches: Nix reports the specified and the actual hash (both SRI)
  mismatch-flat = fails "hash mismatch in fixed-output derivation '.*-fixed-mismatch-flat.drv':"
    (mk "fixed-mismatch-flat" "echo wrong > $out" { outputHash = zero256; });
  mismatch-rec = fails "hash mismatch in fixed-output derivation '.*-fixed-mismatch-rec.drv':"
    (mk "fixed-mismatch-rec" "mkdir $out" { outputHashMode = "recursive";
      outputHash = "sha512-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="; });
  # a flat fixed output must be a non-executable regular file
  flat-exec = fails "output path '.*-fixed-flat-exec' should be a non-executable regular file since recursive hashing is not enabled \\(outputHashMode=flat\\)"
    (mk "fixed-flat-exec" "echo hello > $out; chmod 755 $out" {
      outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; });
  flat-dir = fails "output path '.*-fixed-flat-dir' should be a non-executable regular file since recursive hashing is not enabled \\(outputHashMode=flat\\)"
    (mk "fixed-flat-dir" "mkdir $out" {
      outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; });
}
