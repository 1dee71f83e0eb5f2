"""Differential tests: ``ocibuild nix-build`` against the real nix-build over nix/."""
