"""Digest: a 32-byte blake3 hash, the address of every castore object."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import blake3

DIGEST_SIZE = 32


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A blake3 digest. ``str()`` is lowercase hex; ``b64`` is tvix's ``blake3-<base64>`` form."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, got {self.raw!r:.80}")

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """Digest of ``data``."""
        return cls(blake3.blake3(data).digest())

    @classmethod
    def from_hex(cls, text: str) -> Digest:
        """Parse 64 hex characters (raises ValueError otherwise)."""
        if len(text) != 2 * DIGEST_SIZE:
            raise ValueError(f"not a blake3 hex digest: {text!r:.80}")
        return cls(bytes.fromhex(text))

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse hex or ``blake3-<base64>``."""
        if text.startswith("blake3-"):
            return cls(base64.b64decode(text[len("blake3-") :], validate=True))
        return cls.from_hex(text)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def b64(self) -> str:
        return "blake3-" + base64.b64encode(self.raw).decode()

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"Digest({self.raw.hex()[:12]}…)"


def hasher(data: bytes | bytearray | memoryview = b"") -> blake3.blake3:
    """A fresh incremental blake3 hasher (``update``/``digest``), fed ``data`` first."""
    return blake3.blake3(data)


EMPTY = Digest(blake3.blake3(b"").digest())  # the empty blob (and the empty directory)
