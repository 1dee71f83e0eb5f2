# Probe derivations for the differential tests (tests/nix/test_differential.py) and docs/nix-sandbox.md.
# Usage: nix-instantiate derivations.nix --arg bbdir /path/to/dir-containing-busybox -A simple
# Every fixed output writes "hello\n" so the fixed-output probes also build.
{ bbdir, system ? "x86_64-linux" }:
let
  bb = builtins.path { path = bbdir; name = "busybox-dir"; };
  mk = name: script: attrs: derivation ({
    inherit name system;
    builder = "${bb}/busybox";
    args = [ "sh" "-c" script ];
  } // attrs);
  hello = "echo hello > $out";
  fixed = name: attrs: mk name hello attrs;
in rec {
  simple = mk "simple" "echo simple > $out" { };
  multi = mk "multi" "for o in $out $dev $lib; do echo $o > $o; done" {
    outputs = [ "out" "dev" "lib" ];
  };
  reordered = mk "reordered" "echo $z > $z; echo $a > $a" { outputs = [ "z" "a" ]; };
  chain = mk "chain" "cat ${simple} ${multi.dev} > $out" { };
  chain2 = mk "chain2" "cat ${chain} ${multi.lib} ${multi} > $out" { };
  # fixed outputs in every algorithm, flat and recursive, hashes given in different encodings
  flat-sha256 = fixed "flat-sha256" { outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  rec-sha256 = fixed "rec-sha256" { outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"; };
  flat-sha1 = fixed "flat-sha1" { outputHashAlgo = "sha1";
    outputHash = "iwjz551fyw0cxcjgf4l6c879zabd6wpm"; };
  rec-sha1 = fixed "rec-sha1" { outputHashMode = "recursive";
    outputHash = "sha1:0deb52c2735eb38d360f976b7b3823c4ad05cce7"; };
  flat-md5 = fixed "flat-md5" { outputHashAlgo = "md5";
    outputHash = "b1946ac92492d2347c6235b4d2611184"; };
  rec-md5 = fixed "rec-md5" { outputHashMode = "recursive"; outputHashAlgo = "md5";
    outputHash = "d3ea68e810bc7f9297024c01b858679e"; };
  flat-sha512-sri = fixed "flat-sha512" { outputHash =
    "sha512-58IrmUxZ2c8rSOVJseJGZmNgRZMNPafBrLKZ0cO3+TH5Sq5B7dosKyB6NuEPi8uNRSI+VIePWzFufOO2vAGWKQ=="; };
  rec-sha512 = fixed "rec-sha512" { outputHashMode = "recursive"; outputHashAlgo = "sha512";
    outputHash = "098d9d63b290cc8dff5705019ac0b61fa6ed0b0b1a3d732ef91958c3e5b2d17e8b02b5ed8b01c0526e0e16708adcca96bbf1a906a105927ded24a2236e2a80b0"; };
  # same fixed output, different builder: equal modulo hashes, merged in the consumer's ATerm
  flat-sha256-twin = mk "flat-sha256" "printf 'hello\\n' > $out" {
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; };
  on-fixed = mk "on-fixed" "cat ${flat-sha256} ${flat-sha256-twin} ${rec-sha1} > $out" { };
  pass-as-file = mk "pass-as-file" "cat $barPath $bazPath > $out; echo \"$foo\" >> $out" {
    bar = "bar contents\n"; baz = "baz"; foo = "plain"; passAsFile = [ "bar" "baz" ];
  };
  odd-env = mk "odd-env" "env > $out" {
    quotes = "say \"hi\" 'there'";
    backslashes = "a\\b\\\\c\\n";
    newlines = "line1\nline2\r\nline3\n";
    tabs = "a\tb\t";
    unicode = "héllo wörld ☃ 🦀";
    empty = "";
    "weird key \"x\"\\" = "v";
    list = [ "a" "b c" 1 true false null ];
    number = 42;
    float = 1.5;
    yes = true;
    no = false;
    nul = null;
    path = ./derivations.nix;
  };
  odd-args = derivation {
    name = "odd-args"; inherit system; builder = "${bb}/busybox";
    args = [ "sh" "-c" "printf '%s|' \"$@\" > $out" "arg0" "with space" "q\"uote" "back\\slash" "nl\nx" "" "tab\tx" ];
  };
  with-sources = mk "with-sources" "cat ${builtins.toFile "foo" "bar"} ${./derivations.nix} > $out" {
    other = builtins.toFile "with-ref" "see ${builtins.toFile "foo" "bar"}";
  };
  structured = mk "structured" "cp .attrs.json $out" {
    __structuredAttrs = true;
    outputs = [ "out" "doc" ];
    nested = { a = [ 1 2 { b = "c"; } ]; s = "q\"\n"; };
  };
  on-structured = mk "on-structured" "cat ${structured.doc} > $out" { };
}
