"""Store paths and the ways Nix 2.8 computes them (``store-api.cc``, ``path.cc``).

A store path is ``/nix/store/<32 nixbase32 chars>-<name>``; the hash part is the sha256 of a
fingerprint ``<type>:sha256:<hex inner hash>:/nix/store:<name>`` XOR-folded to 20 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix import nixbase32
from pytest_ocibuild.nix.hashes import Hash, compress_hash, sha256

STORE_DIR = "/nix/store"
HASH_PART_LEN = 32
MAX_NAME_LEN = 211
_NAME_RE = re.compile(r"[0-9a-zA-Z+\-._?=]+")


def validate_name(name: str, what: str = "store path name") -> str:
    """Check a store path name like Nix 2.8 ``checkName``: 1-211 of ``[0-9a-zA-Z+-._?=]``."""
    if not name:
        raise NixError(f"{what}: empty name")
    if len(name) > MAX_NAME_LEN:
        raise NixError(f"{what}: name {name[:40]!r}... is longer than {MAX_NAME_LEN} characters")
    if not _NAME_RE.fullmatch(name):
        bad = next(c for c in name if not _NAME_RE.fullmatch(c))
        raise NixError(f"{what}: name {name!r} contains illegal character {bad!r}")
    return name


@dataclass(frozen=True, slots=True, order=True)
class StorePath:
    """A store path below ``/nix/store``: hash part (nixbase32 of 20 bytes) and name."""

    hash_part: str
    name: str

    def __post_init__(self) -> None:
        if len(self.hash_part) != HASH_PART_LEN or not nixbase32.is_valid(self.hash_part, 20):
            raise NixError(f"store path {self.base_name!r}: invalid hash part {self.hash_part!r}")
        validate_name(self.name, f"store path {self.base_name!r}")

    @classmethod
    def from_digest(cls, digest: bytes, name: str) -> StorePath:
        """From the 20-byte compressed digest."""
        return cls(nixbase32.encode(digest), name)

    @classmethod
    def from_base_name(cls, base: str) -> StorePath:
        """Parse ``<hash>-<name>``."""
        if len(base) < HASH_PART_LEN + 2 or base[HASH_PART_LEN] != "-":
            raise NixError(f"{base!r} is not a valid store path base name")
        return cls(base[:HASH_PART_LEN], base[HASH_PART_LEN + 1:])

    @classmethod
    def from_absolute(cls, path: str) -> StorePath:
        """Parse ``/nix/store/<hash>-<name>`` (exactly; no trailing or double slashes)."""
        prefix = STORE_DIR + "/"
        if not path.startswith(prefix) or "/" in path[len(prefix):]:
            raise NixError(f"path {path!r} is not in the Nix store")
        return cls.from_base_name(path[len(prefix):])

    @property
    def digest(self) -> bytes:
        """The 20 bytes behind the hash part."""
        return nixbase32.decode(self.hash_part, 20)

    @property
    def base_name(self) -> str:
        return f"{self.hash_part}-{self.name}"

    @property
    def absolute(self) -> str:
        return f"{STORE_DIR}/{self.base_name}"

    @property
    def is_derivation(self) -> bool:
        return self.name.endswith(".drv")

    def __str__(self) -> str:
        return self.absolute


def parse_store_path(path: str | StorePath) -> StorePath:
    """Accept a StorePath or an absolute store path string."""
    return path if isinstance(path, StorePath) else StorePath.from_absolute(path)


def make_store_path(type_: str, inner_hash_hex: str, name: str) -> StorePath:
    """Nix ``makeStorePath``: ``<type>:sha256:<hex>:/nix/store:<name>`` hashed and folded."""
    validate_name(name)
    fingerprint = f"{type_}:sha256:{inner_hash_hex}:{STORE_DIR}:{name}"
    return StorePath.from_digest(compress_hash(sha256(fingerprint.encode())), name)


def _make_type(type_: str, references: Iterable[str | StorePath], self_ref: bool = False) -> str:
    refs = sorted({parse_store_path(r).absolute for r in references})
    return ":".join([type_, *refs, *(["self"] if self_ref else [])])


def make_text_path(name: str, contents: bytes,
                   references: Iterable[str | StorePath] = ()) -> StorePath:
    """Path of a text file added with references (``builtins.toFile``, ``.drv`` files)."""
    return make_store_path(_make_type("text", references), sha256(contents).hex(), name)


def make_fixed_output_path(name: str, hash_: Hash, *, recursive: bool,
                           references: Iterable[str | StorePath] = (),
                           self_ref: bool = False) -> StorePath:
    """Nix ``makeFixedOutputPath``.

    recursive sha256 → type ``source`` (with references) over the NAR hash; anything else →
    type ``output:out`` over sha256 of ``fixed:out:[r:]<algo>:<hex>:`` (no references allowed).
    """
    if hash_.algo == "sha256" and recursive:
        return make_store_path(_make_type("source", references, self_ref), hash_.hex, name)
    if list(references) or self_ref:
        raise NixError(f"{name}: a flat or non-sha256 fixed-output path cannot have references")
    inner = f"fixed:out:{'r:' if recursive else ''}{hash_.algo}:{hash_.hex}:"
    return make_store_path("output:out", sha256(inner.encode()).hex(), name)


def output_path_name(drv_name: str, output_name: str) -> str:
    """``<drv name>`` for output ``out``, else ``<drv name>-<output>``."""
    return drv_name if output_name == "out" else f"{drv_name}-{output_name}"


def make_output_path(output_name: str, drv_hash_hex: str, drv_name: str) -> StorePath:
    """Path of an input-addressed output: type ``output:<name>`` over the modulo hash."""
    return make_store_path(f"output:{output_name}", drv_hash_hex,
                           output_path_name(drv_name, output_name))


def hash_placeholder(output_name: str) -> str:
    """Nix ``hashPlaceholder``: ``/`` + nixbase32(sha256("nix-output:<name>"))."""
    return "/" + nixbase32.encode(sha256(f"nix-output:{output_name}".encode()))
