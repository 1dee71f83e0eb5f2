# A stand-in for nixpkgs with just the attributes ../../../flake.nix uses, so that the flake's
# structure can be evaluated on a machine without network or nixpkgs (tests/flake/test_flake.py).
# Each package is a trivial derivation; nothing here builds the real thing.
{
  outputs = { self }:
    let
      lib = {
        genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
        cleanSourceWith = { src, filter }: builtins.path { path = src; name = "source"; inherit filter; };
      };
      pkgsFor = system:
        let
          drv = name: attrs: derivation ({ inherit name system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; } // attrs);
          pyPkg = name: drv "python3-${name}" { };
          ps = lib.genAttrs [ "blake3" "pyyaml" "mfusepy" "jsonschema" "pytest" "syrupy"
                              "pytest-xdist" "hypothesis" "ruff" "setuptools" ] pyPkg // {
            buildPythonPackage = a: drv "${a.pname}-${a.version}" { deps = a.dependencies; };
          };
        in {
          inherit system;
          python3Packages = ps;
          python3 = { withPackages = f: drv "python3-env" { deps = f ps; }; };
          runc = drv "runc" { }; busybox = drv "busybox" { }; fuse = drv "fuse" { };
          fuse3 = drv "fuse3" { }; nix = drv "nix" { };
          mkShell = a: drv "shell" { deps = a.packages; };
          runCommand = name: env: script: drv name (env // { inherit script; });
        };
    in {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
    };
}
