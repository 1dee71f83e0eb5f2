"""Castore nodes and directories, encoded exactly as tvix-castore's proto3 messages.

``Directory{directories=1, files=2, symlinks=3}``, ``DirectoryNode{name=1, digest=2, size=3}``,
``FileNode{name=1, digest=2, size=3, executable=4}``, ``SymlinkNode{name=1, target=2}``.
Entries are sorted bytewise by name within each list; zero/false/empty fields are omitted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Union

from pytest_ocibuild.castore.digest import DIGEST_SIZE, Digest

MAX_NAME = 255
MAX_TARGET = 4095


@dataclass(frozen=True, slots=True)
class FileNode:
    """A regular file: blake3 of its contents, its size, and the executable bit."""

    digest: Digest
    size: int
    executable: bool = False


@dataclass(frozen=True, slots=True)
class DirectoryNode:
    """A reference to a Directory object by digest; ``size`` as in ``Directory.size``."""

    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class SymlinkNode:
    """A symbolic link; ``target`` is raw bytes (non-empty, no NUL, at most 4095 bytes)."""

    target: bytes

    def __post_init__(self) -> None:
        validate_target(self.target)


Node = Union[FileNode, DirectoryNode, SymlinkNode]  # noqa: UP007


def validate_name(name: bytes) -> bytes:
    """Return ``name`` if it is a valid path component, else raise ValueError."""
    if not isinstance(name, bytes):
        raise ValueError(f"name must be bytes, got {type(name).__name__}")
    if not name or name in (b".", b".."):
        raise ValueError(f"invalid name {name!r}")
    if b"/" in name or b"\0" in name:
        raise ValueError(f"invalid name {name!r}: contains '/' or NUL")
    if len(name) > MAX_NAME:
        raise ValueError(f"invalid name {name[:40]!r}…: longer than {MAX_NAME} bytes")
    return name


def validate_target(target: bytes) -> bytes:
    """Return ``target`` if it is a valid symlink target, else raise ValueError."""
    if not isinstance(target, bytes):
        raise ValueError(f"symlink target must be bytes, got {type(target).__name__}")
    if not target or b"\0" in target or len(target) > MAX_TARGET:
        raise ValueError(f"invalid symlink target {target[:60]!r}")
    return target


@dataclass(frozen=True, slots=True)
class Directory:
    """A directory listing: name -> node. Immutable; iteration is in canonical (sorted) order."""

    entries: Mapping[bytes, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked = {validate_name(n): self.entries[n] for n in sorted(self.entries)}
        for name, node in checked.items():
            if not isinstance(node, FileNode | DirectoryNode | SymlinkNode):
                raise ValueError(f"entry {name!r} is not a node: {node!r:.80}")
        object.__setattr__(self, "entries", _FrozenDict(checked))

    def __iter__(self) -> Iterator[tuple[bytes, Node]]:
        return iter(self.entries.items())

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def size(self) -> int:
        """Size as tvix's Rust code computes it: ``2·entries + Σ child directory sizes``.

        (castore.proto's comment says ``entries + Σ``; tvix's ingestion writes, and its
        directory service checks, the Rust definition, so we follow that.)
        """
        return 2 * len(self.entries) + sum(
            n.size for n in self.entries.values() if isinstance(n, DirectoryNode)
        )

    def encode(self) -> bytes:
        """Canonical proto3 bytes (directories, then files, then symlinks; each sorted).

        Names, digests and targets are never empty, so their fields are always present.
        """
        dirs, files, links = bytearray(), bytearray(), bytearray()
        for name, node in self.entries.items():
            head = b"\x0a" + _varint(len(name)) + name + _DIGEST_TAG
            if isinstance(node, FileNode):
                msg = head + node.digest.raw
                if node.size:
                    msg += b"\x18" + _varint(node.size)
                if node.executable:
                    msg += b"\x20\x01"
                files += b"\x12" + _varint(len(msg)) + msg
            elif isinstance(node, DirectoryNode):
                msg = head + node.digest.raw
                if node.size:
                    msg += b"\x18" + _varint(node.size)
                dirs += b"\x0a" + _varint(len(msg)) + msg
            else:
                msg = b"\x0a" + _varint(len(name)) + name + b"\x12" + _varint(
                    len(node.target)) + node.target
                links += b"\x1a" + _varint(len(msg)) + msg
        return bytes(dirs + files + links)

    @property
    def digest(self) -> Digest:
        """blake3 of ``encode()``."""
        return Digest.of(self.encode())

    def node(self) -> DirectoryNode:
        """The DirectoryNode that refers to this directory."""
        return DirectoryNode(self.digest, self.size)

    @classmethod
    def decode(cls, data: bytes) -> Directory:
        """Parse proto3 bytes; raise ValueError on anything tvix would reject."""
        entries: dict[bytes, Node] = {}
        last: dict[int, bytes] = {}
        for fnum, value in _fields(data):
            if not isinstance(value, bytes) or fnum not in (1, 2, 3):
                raise ValueError(f"unexpected field {fnum} in Directory")
            sub = dict(_fields(value))
            name = sub.get(1, b"")
            if not isinstance(name, bytes):
                raise ValueError("name must be bytes")
            validate_name(name)
            if fnum in last and last[fnum] >= name:
                raise ValueError(f"entries not sorted at {name!r}")
            last[fnum] = name
            if name in entries:
                raise ValueError(f"duplicate name {name!r}")
            if fnum == 3:
                entries[name] = SymlinkNode(_as_bytes(sub.get(2, b"")))
                continue
            raw = _as_bytes(sub.get(2, b""))
            if len(raw) != DIGEST_SIZE:
                raise ValueError(f"entry {name!r}: digest has {len(raw)} bytes")
            size = sub.get(3, 0)
            if not isinstance(size, int):
                raise ValueError("size must be a varint")
            if fnum == 1:
                entries[name] = DirectoryNode(Digest(raw), size)
            else:
                entries[name] = FileNode(Digest(raw), size, bool(sub.get(4, 0)))
        directory = cls(entries)
        if directory.encode() != data:
            raise ValueError("directory is not in canonical encoding")
        return directory


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses mutation and hashes by its items."""

    def _refuse(self, *_: object, **__: object) -> None:
        raise TypeError("Directory entries are immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


_ONE_BYTE = tuple(bytes([i]) for i in range(128))
_DIGEST_TAG = b"\x12" + bytes([DIGEST_SIZE])  # field 2, length-delimited, 32 bytes


def _varint(n: int) -> bytes:
    if n < 128:
        return _ONE_BYTE[n]
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _as_bytes(v: object) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError("expected a length-delimited field")
    return v


def _fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """Yield (field number, value) for varint and length-delimited fields."""
    i, n = 0, len(data)

    def read_varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = read_varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            yield num, read_varint()
        elif wire == 2:
            length = read_varint()
            if i + length > n:
                raise ValueError("truncated field")
            yield num, data[i : i + length]
            i += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
