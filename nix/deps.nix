# Dependencies and references. Nix records as references the store paths of the input closure
# (and of the outputs themselves) whose 32-character hash part occurs anywhere in an output's
# NAR: contents, symlink targets and file names alike.
{ lib, fixed }:
let inherit (lib) mk bb busybox; in
rec {
  # a chain: a -> b -> c (a refers to b only; c is in a's closure through b)
  c = mk "dep-c" "echo c > $out" { };
  b = mk "dep-b" "echo 'b needs ${c}' > $out" { };
  a = mk "dep-a" "echo 'a needs ${b}' > $out" { };
  # a diamond: top refers to left and right, which both refer to c
  left = mk "dep-left" "echo ${c} > $out" { };
  right = mk "dep-right" "echo ${c} > $out" { };
  diamond = mk "dep-diamond" "cat ${left} ${right} > $out" { };

  # three inputs read, only c mentioned: references = [c]
  subset = mk "dep-subset" "cat ${c} > $out; test -s ${a}; test -s ${b}; echo ${c} >> $out" { };
  # inputs read but never mentioned: no references
  no-refs = mk "dep-no-refs" "wc -c < ${a} > $out; wc -c < ${b} >> $out" { };
  # a's contents copied: mentions b, which is in the input closure (not a direct input)
  transitive = mk "dep-transitive" "cat ${a} > $out" { };
  # only the bare 32-character hash part of c, no /nix/store prefix
  hash-only = mk "dep-hash-only" "echo ${c} | cut -c 12-43 > $out" { };
  # c's base name as a file name, b as a symlink target: both are references
  in-names = mk "dep-in-names" ''
    mkdir $out; touch $out/$(basename ${c}); ln -s ${b} $out/link-to-b
  '' { };
  # c's path at offsets around 64 KiB, 1 MiB and 4 MiB chunk boundaries of a ~5 MB file
  at-boundaries = mk "dep-at-boundaries" ''
    p=${c}; : > $out
    for end in 65536 1048576 4194304; do
      pad=$(( end - $(wc -c < $out) - 20 ))
      head -c $pad /dev/zero >> $out; printf %s $p >> $out
    done
    head -c 100000 /dev/zero >> $out
  '' { };
  # a store path mentioned without being in the input closure is not a reference
  not-in-closure = mk "dep-not-in-closure" ''
    echo ${builtins.unsafeDiscardStringContext a.outPath} > $out; cat ${c} >> $out
  '' { };
  # sources as references: the busybox directory and a builtins.toFile text file
  sources = mk "dep-sources" ''
    echo ${bb} > $out; cat ${builtins.toFile "note.txt" "a note\n"} >> $out
    echo ${builtins.toFile "note.txt" "a note\n"} >> $out
  '' { };
  # the output mentions itself
  self-ref = mk "dep-self-ref" "echo $out > $out" { };

  # several outputs referring to each other, without a cycle:
  # lib -> (none), out -> lib, dev -> out lib, bin -> out bin (itself)
  multi = mk "dep-multi" ''
    echo lib > $lib
    echo "out needs $lib" > $out
    mkdir $dev; echo $out > $dev/out; ln -s $lib $dev/lib
    mkdir $bin; echo "$out $bin" > $bin/paths
  '' { outputs = [ "out" "dev" "lib" "bin" ]; };
  # uses one output of multi: references = [dev], closure = dev out lib
  on-multi-dev = mk "dep-on-multi-dev" "cat ${multi.dev}/out > $out; echo ${multi.dev} >> $out" { };
  # copies multi.out (which mentions lib): lib is found through the closure
  on-multi-out = mk "dep-on-multi-out" "cat ${multi} > $out" { };
  # a dependency whose output refers to its own builtins.toFile source: that source is in
  # the closure of the input without being an input source here
  on-sources = mk "dep-on-sources" "cat ${sources} > $out" { };
  # a .drv file as a plain source (unsafeDiscardOutputDependency): the .drv and its closure
  # are inputs, the outputs are not built
  drv-source = mk "dep-drv-source" ''
    echo ${builtins.unsafeDiscardOutputDependency c.drvPath} > $out
    test -e ${builtins.unsafeDiscardOutputDependency c.drvPath}
  '' { };
  # a fixed output as input (its path does not depend on the builder)
  on-fixed = mk "dep-on-fixed" "cat ${fixed.flat-sha256} > $out; echo ${fixed.rec-sha256} >> $out" { };
}
