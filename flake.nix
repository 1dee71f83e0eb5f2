{
  description = "pytest-ocibuild: a pytest plugin and sandboxed OCI build executor (runc + blake3 castore)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Only what the package and its tests need: no .venv, caches or build results.
      src = nixpkgs.lib.cleanSourceWith {
        src = ./.;
        filter = path: type:
          let base = baseNameOf path; in
          !(builtins.elem base [ ".venv" ".git" "result" "__pycache__" ".pytest_cache" ".ruff_cache" ".hypothesis" ]);
      };

      pythonDeps = ps: with ps; [ blake3 pyyaml mfusepy jsonschema pytest syrupy ];
      testDeps = ps: with ps; [ pytest-xdist hypothesis ];

      package = pkgs: pkgs.python3Packages.buildPythonPackage {
        pname = "pytest-ocibuild";
        version = "0.1.0";
        pyproject = true;
        inherit src;
        build-system = [ pkgs.python3Packages.setuptools ];
        dependencies = pythonDeps pkgs.python3Packages;
        # The full suite needs runc, /dev/fuse and a Nix store: see checks.unit.
        doCheck = false;
        pythonImportsCheck = [ "pytest_ocibuild" "pytest_ocibuild.plugin.hooks" ];
      };
    in
    {
      packages = forAllSystems (pkgs: rec {
        pytest-ocibuild = package pkgs;
        default = pytest-ocibuild;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: pythonDeps ps ++ testDeps ps ++ [ ps.ruff ]))
            pkgs.runc
            pkgs.busybox
            pkgs.fuse
            pkgs.fuse3
            pkgs.nix
          ];
        };
      });

      # What a Nix build sandbox allows: no runc (no user namespaces for the builder), no
      # /dev/fuse, no Nix store to build in, not root, no OCI schema files. So the checks run
      # the pure unit tests (castore, request, spec, bundle layout, refscan, Nix formats,
      # case parsing, layering); tests needing runc/FUSE/nix-build/root skip with a reason, and
      # schema validation is deselected. The real suite runs with `bash .ci/run`.
      checks = forAllSystems (pkgs: {
        unit = pkgs.runCommand "pytest-ocibuild-unit-tests" {
          nativeBuildInputs = [
            (pkgs.python3.withPackages (ps: pythonDeps ps ++ testDeps ps ++ [ (package pkgs) ]))
          ];
        } ''
          cp -r ${src} src && chmod -R u+w src && cd src
          export HOME=$TMPDIR
          python -m pytest -q -p no:cacheprovider \
            tests/test_layers.py tests/castore tests/nix \
            tests/build/test_request.py tests/build/test_spec.py tests/build/test_bundle.py \
            tests/build/test_refscan.py tests/plugin/test_case.py \
            -m "not runc and not fuse and not nix" -k "not schema"
          touch $out
        '';
        package = self.packages.${pkgs.system}.default;
      });
    };
}
