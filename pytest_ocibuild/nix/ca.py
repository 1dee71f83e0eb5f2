"""Content addressing of build outputs (Nix 2.8 ``registerOutputs``, ``references.cc``).

* ``RewritingSink`` / ``modulo_hash``: Nix's ``HashModuloSink`` — the output's serialisation
  (NAR if recursive, the file's bytes if flat) with every occurrence of the output's own
  temporary hash part replaced by zeros, followed by ``|<position>`` for each occurrence. This
  is the content hash of floating CA outputs and of fixed outputs.
* ``rewrite_node``: Nix rewrites an output by replacing hash parts in its NAR stream; on castore
  trees that is file contents, symlink targets and entry names (a match cannot straddle NAR
  framing, which holds length fields and padding). Produces new castore objects.
* ``name_needles``: Nix scans the NAR stream for references, so entry names count too; the
  executor's refscan reads contents and symlink targets only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

from pytest_ocibuild.castore.nar import nar_chunks
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.castore.trees import get_directory
from pytest_ocibuild.errors import NotFound
from pytest_ocibuild.nix.hashes import Hash

CHUNK = 1 << 20


class RewritingSink:
    """Nix ``RewritingSink``: replace ``old`` by ``new`` (same length) in a byte stream,
    recording the stream positions of the matches."""

    def __init__(self, old: bytes, new: bytes) -> None:
        if len(old) != len(new) or not old:
            raise ValueError("rewrite needs two non-empty strings of equal length")
        self.old, self.new = old, new
        self.prev = b""
        self.pos = 0
        self.matches: list[int] = []

    def feed(self, data: bytes) -> bytes:
        """Rewrite ``data``; returns the bytes that are final (a tail is held back)."""
        s = self.prev + data
        if self.old in s:
            j = s.find(self.old)
            parts = []
            last = 0
            while j != -1:
                self.matches.append(self.pos + j)
                parts.append(s[last:j])
                parts.append(self.new)
                last = j + len(self.old)
                j = s.find(self.old, last)
            parts.append(s[last:])
            s = b"".join(parts)
        keep = len(self.old) - 1
        if len(s) < len(self.old):
            self.prev = s
        else:
            self.prev = s[len(s) - keep:] if keep else b""
        consumed = len(s) - len(self.prev)
        self.pos += consumed
        return s[:consumed]

    def flush(self) -> bytes:
        out, self.prev = self.prev, b""
        self.pos += len(out)
        return out


def modulo_hash(chunks: Iterable[bytes], algo: str, modulus: str) -> Hash:
    """Nix ``HashModuloSink(algo, modulus)`` over ``chunks``."""
    h = hashlib.new(algo)
    sink = RewritingSink(modulus.encode(), b"\0" * len(modulus))
    for c in chunks:
        h.update(sink.feed(c))
    h.update(sink.flush())
    for pos in sink.matches:
        h.update(f"|{pos}".encode())
    return Hash(algo, h.digest())


def content_chunks(store: Store, node: Node, recursive: bool) -> Iterator[bytes]:
    """The NAR of ``node`` (recursive) or the file's bytes (flat)."""
    if recursive:
        yield from nar_chunks(store, node)
        return
    assert isinstance(node, FileNode)
    yield from _blob(store, node)


def _blob(store: Store, node: FileNode) -> Iterator[bytes]:
    f = store.open_blob(node.digest)
    if f is None:
        raise NotFound(f"blob {node.digest.hex} is not in the store")
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def rewrite_node(store: Store, node: Node, rewrites: Mapping[bytes, bytes]) -> Node:
    """``node`` with every ``rewrites`` key replaced by its value (names, targets, contents)."""
    rewrites = {k: v for k, v in rewrites.items() if k != v}
    if not rewrites:
        return node

    def sub(data: bytes) -> bytes:
        for k in sorted(rewrites):
            data = data.replace(k, rewrites[k])
        return data

    def walk(n: Node) -> Node:
        if isinstance(n, SymlinkNode):
            return SymlinkNode(sub(n.target))
        if isinstance(n, FileNode):
            return _rewrite_file(store, n, rewrites)
        d = get_directory(store, n.digest)
        new = Directory({sub(name): walk(child) for name, child in d})
        store.put_directory(new)
        return new.node()

    return walk(node)


def _rewrite_file(store: Store, node: FileNode, rewrites: Mapping[bytes, bytes]) -> FileNode:
    if len(rewrites) != 1:  # several rewrites: apply them one after the other
        for k in sorted(rewrites):
            node = _rewrite_file(store, node, {k: rewrites[k]})
        return node
    ((old, new),) = rewrites.items()
    sink = RewritingSink(old, new)
    size = 0
    with store.blob_writer() as w:
        for chunk in _blob(store, node):
            out = sink.feed(chunk)
            w.write(out)
            size += len(out)
        out = sink.flush()
        w.write(out)
        size += len(out)
        if not sink.matches:
            w.abort()
            return node
        digest = w.commit()
    return FileNode(digest, size, node.executable)


def name_needles(store: Store, node: Node, needles: Iterable[str]) -> set[str]:
    """The ``needles`` that occur in entry names below ``node``."""
    wanted = set(needles)
    found: set[str] = set()
    if not isinstance(node, DirectoryNode) or not wanted:
        return found
    length = {len(n) for n in wanted}
    stack = [node]
    while stack:
        for name, child in get_directory(store, stack.pop().digest):
            text = name.decode("latin-1")
            for ln in length:
                for i in range(len(text) - ln + 1):
                    if text[i:i + ln] in wanted:
                        found.add(text[i:i + ln])
            if isinstance(child, DirectoryNode):
                stack.append(child)
    return found
