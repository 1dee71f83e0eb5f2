"""Nix compatibility: nixbase32, hashes, store paths, .drv files and derivation hashing.

Sits above ``castore`` and ``build``; imports neither pytest nor the plugin. The sandbox a Nix
builder expects is specified in ``docs/nix-sandbox.md`` (probes in ``nix/probes/``).

The names below are imported on first use, so that importing one submodule (as the CLI does)
does not import them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "nixbase32": "",
    **dict.fromkeys(("Derivation", "Output", "parse_drv", "pass_as_file_path", "write_drv"),
                    "derivation"),
    **dict.fromkeys(("DrvHash", "Resolver", "check_derivation", "derivation_path",
                     "derivation_type", "file_resolver", "hash_derivation_modulo",
                     "output_paths"), "drv_hash"),
    **dict.fromkeys(("Hash", "compress_hash", "hash_bytes", "parse_hash"), "hashes"),
    **dict.fromkeys(("STORE_DIR", "StorePath", "hash_placeholder", "make_fixed_output_path",
                     "make_output_path", "make_store_path", "make_text_path",
                     "output_path_name", "validate_name"), "store_path"),
}

if TYPE_CHECKING:
    from pytest_ocibuild.nix import nixbase32
    from pytest_ocibuild.nix.derivation import (
        Derivation,
        Output,
        parse_drv,
        pass_as_file_path,
        write_drv,
    )
    from pytest_ocibuild.nix.drv_hash import (
        DrvHash,
        Resolver,
        check_derivation,
        derivation_path,
        derivation_type,
        file_resolver,
        hash_derivation_modulo,
        output_paths,
    )
    from pytest_ocibuild.nix.hashes import Hash, compress_hash, hash_bytes, parse_hash
    from pytest_ocibuild.nix.store_path import (
        STORE_DIR,
        StorePath,
        hash_placeholder,
        make_fixed_output_path,
        make_output_path,
        make_store_path,
        make_text_path,
        output_path_name,
        validate_name,
    )


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if source == "":
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


__all__ = [
    "STORE_DIR",
    "Derivation",
    "DrvHash",
    "Hash",
    "Output",
    "Resolver",
    "StorePath",
    "check_derivation",
    "compress_hash",
    "derivation_path",
    "derivation_type",
    "file_resolver",
    "hash_bytes",
    "hash_derivation_modulo",
    "hash_placeholder",
    "make_fixed_output_path",
    "make_output_path",
    "make_store_path",
    "make_text_path",
    "nixbase32",
    "output_path_name",
    "output_paths",
    "parse_drv",
    "parse_hash",
    "pass_as_file_path",
    "validate_name",
    "write_drv",
]
