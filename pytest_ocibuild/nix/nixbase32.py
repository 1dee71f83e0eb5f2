"""Nix's base-32 encoding ("nixbase32").

The alphabet omits ``e o u t``. The input is read as one little-endian integer and the digits are
printed most significant first, so the *last* character holds the lowest five bits of byte 0
(Nix 2.8 ``printHash32``/``Hash::Hash``). 20 bytes encode to 32 characters, 32 bytes to 52.
"""

from __future__ import annotations

from pytest_ocibuild.errors import NixError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUES = {c: i for i, c in enumerate(ALPHABET)}


def encoded_len(n_bytes: int) -> int:
    """Length of the nixbase32 form of ``n_bytes`` bytes."""
    return (n_bytes * 8 - 1) // 5 + 1 if n_bytes > 0 else 0


def decoded_len(n_chars: int) -> int:
    """Number of bytes encoded by ``n_chars`` characters (extra bits must be zero)."""
    return n_chars * 5 // 8


def encode(data: bytes) -> str:
    """Encode ``data`` in nixbase32."""
    value = int.from_bytes(data, "little")
    n = encoded_len(len(data))
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(n - 1, -1, -1))


def decode(text: str, size: int | None = None) -> bytes:
    """Decode nixbase32 ``text`` into ``size`` bytes (default: ``decoded_len(len(text))``).

    Raises NixError for a character outside the alphabet, a length that does not match ``size``,
    or non-zero bits beyond the last byte (as Nix does).
    """
    if size is None:
        size = decoded_len(len(text))
    if len(text) != encoded_len(size):
        raise NixError(f"invalid nixbase32 {text!r}: {len(text)} characters, "
                       f"expected {encoded_len(size)} for {size} bytes")
    value = 0
    for c in text:
        digit = _VALUES.get(c)
        if digit is None:
            raise NixError(f"invalid nixbase32 {text!r}: bad character {c!r}")
        value = (value << 5) | digit
    if value >> (8 * size):
        raise NixError(f"invalid nixbase32 {text!r}: non-zero padding bits")
    return value.to_bytes(size, "little")


def is_valid(text: str, size: int | None = None) -> bool:
    """True if ``text`` decodes (to ``size`` bytes, if given)."""
    try:
        decode(text, size)
    except NixError:
        return False
    return True
