"""Nix ARchive (NAR) rendering of castore trees, streamed from blob readers.

Every token is a little-endian u64 length, the bytes, and zero padding to a multiple of 8.
Directory entries appear in strictly ascending bytewise order (the castore's canonical order).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.castore.trees import get_directory
from pytest_ocibuild.errors import NotFound, StoreError

CHUNK = 1 << 20
_FLUSH = 64 << 10


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 8)


def _tok(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + _pad(len(data))


_OPEN, _CLOSE = _tok(b"("), _tok(b")")
_DIR_HEAD = _OPEN + _tok(b"type") + _tok(b"directory")
_LINK_HEAD = _OPEN + _tok(b"type") + _tok(b"symlink") + _tok(b"target")
_FILE_HEAD = _OPEN + _tok(b"type") + _tok(b"regular")
_EXEC = _tok(b"executable") + _tok(b"")
_CONTENTS = _tok(b"contents")
_ENTRY_HEAD = _tok(b"entry") + _OPEN + _tok(b"name")
_NODE = _tok(b"node")


def nar_chunks(store: Store, node: Node) -> Iterator[bytes]:
    """Yield the NAR serialisation of ``node`` in pieces (file contents in ≤ 1 MiB chunks).

    Missing objects raise NotFound; a blob whose length differs from its FileNode's size, or
    that fails verification, raises StoreError.
    """
    out = bytearray(_tok(b"nix-archive-1"))
    stack: list[Iterator[tuple[bytes, Node]]] = []

    def open_node(n: Node) -> Iterator[bytes]:
        """Emit ``n``; directories stay open (pushed on ``stack``)."""
        nonlocal out
        if isinstance(n, DirectoryNode):
            out += _DIR_HEAD
            stack.append(iter(get_directory(store, n.digest)))
        elif isinstance(n, SymlinkNode):
            out += _LINK_HEAD + _tok(n.target) + _CLOSE
        else:
            out += _FILE_HEAD + (_EXEC if n.executable else b"") + _CONTENTS
            out += n.size.to_bytes(8, "little")
            yield bytes(out)
            out = bytearray()
            yield from _blob_chunks(store, n)
            out += _pad(n.size) + _CLOSE

    yield from open_node(node)
    while stack:
        if len(out) >= _FLUSH:
            yield bytes(out)
            out = bytearray()
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            out += _CLOSE  # the directory
            if stack:
                out += _CLOSE  # the entry holding it
            continue
        name, child = step
        out += _ENTRY_HEAD + _tok(name) + _NODE
        yield from open_node(child)
        if not isinstance(child, DirectoryNode):
            out += _CLOSE
    if out:
        yield bytes(out)


def _blob_chunks(store: Store, node: FileNode) -> Iterator[bytes]:
    f = store.open_blob(node.digest)
    if f is None:
        raise NotFound(f"blob {node.digest.hex} is not in the store")
    seen = 0
    with f:
        while chunk := f.read(CHUNK):
            seen += len(chunk)
            if seen > node.size:
                break
            yield chunk
    if seen != node.size:
        raise StoreError(
            f"blob {node.digest.hex} has {'more' if seen > node.size else seen} bytes,"
            f" its file node says {node.size}",
            reason="corrupt",
        )


def nar_hash(store: Store, node: Node) -> tuple[bytes, int]:
    """``(sha256 digest, size)`` of the NAR of ``node``, computed without buffering it."""
    h = hashlib.sha256()
    size = 0
    for chunk in nar_chunks(store, node):
        h.update(chunk)
        size += len(chunk)
    return h.digest(), size


def sri(sha256: bytes) -> str:
    """Subresource-integrity form ``sha256-<base64>`` of a raw sha256 digest."""
    if len(sha256) != 32:
        raise ValueError(f"a sha256 digest is 32 bytes, got {len(sha256)}")
    return "sha256-" + base64.b64encode(sha256).decode()
