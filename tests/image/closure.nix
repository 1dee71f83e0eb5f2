# A small runtime closure for the image tests: `app` runs `bin/hello` (a busybox script) that
# reads two libraries, both referring to `shared`; all of it refers to the busybox directory.
#
#   app -> liba -> shared -> busybox-dir      app -> libb -> shared
#   app -> busybox-dir                        tool -> busybox-dir (a second top-level path)
{ bbdir, nonce ? "" }:
let
  lib = import ../../nix/lib.nix { inherit bbdir; };
  inherit (lib) mk busybox;
in
rec {
  shared = mk "img-shared" ''
    mkdir $out; echo "shared${nonce}" > $out/data; echo ${busybox} > $out/interp
    head -c 200000 /dev/zero | tr '\0' s > $out/padding
  '' { };
  liba = mk "img-liba" "mkdir $out; echo ${shared} > $out/dep; echo a > $out/data" { };
  libb = mk "img-libb" ''
    mkdir $out; echo ${shared} > $out/dep; echo b > $out/data
    head -c 50000 /dev/zero | tr '\0' b > $out/padding
  '' { };
  app = mk "img-app" ''
    mkdir -p $out/bin
    printf '#!%s sh\necho "hello from app: $(cat %s/data)$(cat %s/data) $(cat %s/data)"\n' \
      ${busybox} ${liba} ${libb} ${shared} > $out/bin/hello
    chmod 555 $out/bin/hello
  '' { };
  tool = mk "img-tool" ''
    mkdir -p $out/bin; ln -s ${busybox} $out/bin/sh
  '' { };
}
