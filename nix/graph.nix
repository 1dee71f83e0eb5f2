# A layered dependency graph for the benchmark (benchmarks/nix.py) and the harness:
# `depth` layers of `width` nodes, node (l, i) depending on (l-1, i) and (l-1, i+1 mod width),
# plus `top` depending on the whole last layer: width * depth + 1 derivations (50 by default),
# all in top's closure. `nonce` enters every node's environment, so a new nonce means a cold
# build on both sides. `trivial` is one derivation with no inputs but busybox.
{ lib, nonce ? "", width ? 7, depth ? 7 }:
let
  inherit (lib) mk;
  node = l: i: mk "graph-${toString l}-${toString i}" ''
    mkdir $out; echo "node ${toString l} ${toString i} $nonce" > $out/self
    for d in $deps; do cat $d/self >> $out/inputs; echo $d >> $out/refs; done
    touch $out/inputs $out/refs
  '' { inherit nonce; deps = if l == 0 then [ ] else [
         (layers (l - 1) i) (layers (l - 1) (if i + 1 == width then 0 else i + 1)) ]; };
  layers = l: i: builtins.elemAt (builtins.elemAt nodes l) i;
  nodes = builtins.genList (l: builtins.genList (node l) width) depth;
in
{
  top = mk "graph-top" "cat $deps > $out" {
    inherit nonce; deps = map (i: "${layers (depth - 1) i}/self") (builtins.genList (i: i) width);
  };
  trivial = mk "graph-trivial" "echo $nonce > $out" { inherit nonce; };
}
