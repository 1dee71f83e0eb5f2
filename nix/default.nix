# The derivation corpus: every attribute `GROUP.CASE` is one case of tests/nixdiff, built by the
# real nix-build and by `ocibuild nix-build`, and compared (outputs, NAR hashes, sizes,
# references, file trees; or the error for cases marked with lib.fails).
#
#   NIX_REMOTE= nix-build --option sandbox true --option substituters '' nix/default.nix \
#     --arg bbdir DIR -A trees.symlinks        # DIR holds only a copy of /bin/busybox
#
#   group      file           what it covers
#   trees      trees.nix      file types, symlinks, odd names and modes, large/deep/many files
#   deps       deps.nix       dependency chains, reference scanning, multiple outputs
#   fixed      fixed.nix      fixed outputs: algorithms, encodings, mismatches
#   attrs      attrs.nix      passAsFile, placeholders, structured attrs, reference constraints
#   sandbox    sandbox.nix    what the builder sees (env, ids, filesystem, /dev, /proc, network)
#   failures   failures.nix   builder failures, missing outputs, cycles, unsupported systems
#   ca         ca.nix         floating content-addressed outputs (experimental ca-derivations)
#   graph      graph.nix      the 50-derivation graph of the benchmark
{ bbdir, system ? "x86_64-linux", nonce ? "" }:
let
  lib = import ./lib.nix { inherit bbdir system; };
  fixed = import ./fixed.nix { inherit lib; };
  deps = import ./deps.nix { inherit lib fixed; };
  graph = import ./graph.nix { inherit lib nonce; };
in
{
  trees = import ./trees.nix { inherit lib; };
  inherit deps fixed;
  attrs = import ./attrs.nix { inherit lib deps; };
  sandbox = import ./sandbox.nix { inherit lib; };
  failures = import ./failures.nix { inherit lib; };
  ca = import ./ca.nix { inherit lib; };
  graph = { inherit (graph) top trivial; };
}
