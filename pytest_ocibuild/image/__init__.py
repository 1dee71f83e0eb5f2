"""OCI image export of built outputs and Nix closures, layered as Nixery layers them.

``layering`` groups a runtime reference graph into layers (dominator subtrees merged by
popularity x size down to a budget), ``popularity`` reads the counts it weighs by, ``tarball``
writes reproducible layer tars from the castore, ``cache`` makes each layer once per hash in
the store (keyed lock, staging, rename, record), ``layout`` writes the OCI image layout and a
``docker load`` archive, ``targets`` turns what ``ocibuild image`` names into graph items and
``command`` is the sub-command. Sits at the nix layer: imports castore, build and nix.
"""
