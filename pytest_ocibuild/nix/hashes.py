"""Nix hash strings: base16, nixbase32, base64 and SRI forms of md5/sha1/sha256/sha512.

Parsing follows Nix 2.8 ``Hash::Hash(rest, type, isSRI)``: an unprefixed or ``algo:`` string is
told apart by its length (hex, nixbase32, base64); ``algo-`` is SRI (base64). Base64 is checked
strictly (padding required), where Nix tolerates missing padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Literal

from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix import nixbase32

HASH_SIZES: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
Base = Literal["base16", "nix32", "base64", "sri"]


def check_algo(algo: str) -> str:
    """Return ``algo`` if Nix knows it, else raise NixError."""
    if algo not in HASH_SIZES:
        raise NixError(f"unknown hash algorithm {algo!r} (expected md5, sha1, sha256 or sha512)")
    return algo


def _b64_len(size: int) -> int:
    return ((4 * size // 3) + 3) & ~3


@dataclass(frozen=True, slots=True)
class Hash:
    """A digest with its algorithm."""

    algo: str
    digest: bytes

    def __post_init__(self) -> None:
        check_algo(self.algo)
        if len(self.digest) != HASH_SIZES[self.algo]:
            raise NixError(f"{self.algo} digest must be {HASH_SIZES[self.algo]} bytes, "
                           f"got {len(self.digest)}")

    @property
    def hex(self) -> str:
        return self.digest.hex()

    @property
    def nix32(self) -> str:
        return nixbase32.encode(self.digest)

    @property
    def b64(self) -> str:
        return base64.b64encode(self.digest).decode()

    @property
    def sri(self) -> str:
        return f"{self.algo}-{self.b64}"

    def to_string(self, base: Base = "base16", *, with_type: bool = True) -> str:
        """Format like Nix ``Hash::to_string`` (SRI always carries its type)."""
        if base == "sri":
            return self.sri
        body = {"base16": self.hex, "nix32": self.nix32, "base64": self.b64}[base]
        return f"{self.algo}:{body}" if with_type else body

    def __str__(self) -> str:
        return self.to_string("nix32")


def hash_bytes(algo: str, data: bytes) -> Hash:
    """Hash ``data`` with ``algo``."""
    return Hash(check_algo(algo), hashlib.new(algo, data).digest())


def sha256(data: bytes) -> bytes:
    """Raw sha256 digest."""
    return hashlib.sha256(data).digest()


def compress_hash(digest: bytes, size: int = 20) -> bytes:
    """XOR-fold ``digest`` to ``size`` bytes (Nix ``compressHash``)."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def _parse_body(body: str, algo: str, sri: bool, original: str) -> bytes:
    size = HASH_SIZES[algo]
    if not sri and len(body) == 2 * size:
        try:
            return bytes.fromhex(body)
        except ValueError:
            raise NixError(f"invalid base-16 hash {original!r}") from None
    if not sri and len(body) == nixbase32.encoded_len(size):
        try:
            return nixbase32.decode(body, size)
        except NixError:
            raise NixError(f"invalid base-32 hash {original!r}") from None
    if sri or len(body) == _b64_len(size):
        try:
            raw = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raw = b""
        if len(raw) != size:
            raise NixError(f"invalid {'SRI' if sri else 'base-64'} hash {original!r}")
        return raw
    raise NixError(f"hash {original!r} has wrong length for hash type {algo!r}")


def parse_hash(text: str, algo: str | None = None) -> Hash:
    """Parse ``algo:body``, SRI ``algo-base64`` or (with ``algo`` given) an unprefixed body.

    If both the string and ``algo`` name a type they must agree. Raises NixError.
    """
    body, parsed, sri = text, None, False
    if ":" in text:
        parsed, body = text.split(":", 1)
    elif "-" in text:
        parsed, body = text.split("-", 1)
        sri = True
    if parsed is not None:
        check_algo(parsed)
    if parsed is None and algo is None:
        raise NixError(f"hash {text!r} does not include a type, nor is the type known from context")
    if parsed is not None and algo is not None and parsed != algo:
        raise NixError(f"hash {text!r} should have type {algo!r}")
    kind = parsed or check_algo(algo or "")
    return Hash(kind, _parse_body(body, kind, sri, text))
