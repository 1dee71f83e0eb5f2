"""Reference scanning: which needles (e.g. Nix store hash parts) occur in a tree.

Like Nix, we look in file contents and symlink targets (not in file names). Files are streamed in
chunks that overlap by ``max(len(needle)) - 1`` bytes, so a needle straddling a chunk boundary is
found and memory stays bounded. The cost grows with the size of the text, not with the number
of needles (see ``Matcher``).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import NotFound

CHUNK_SIZE = 1 << 20
RUN_ALPHABET_MAX = 64  # needles over at most this many distinct bytes use the run strategy


class Matcher:
    """Finds which of ``needles`` occur in byte strings; feed a stream with ``scan_stream``.

    Needles of one length drawn from a small alphabet (hex, nixbase32, base64 hashes) are found by
    mapping the data to 1/0 (in the alphabet or not) with ``bytes.translate`` and ``find``-ing runs
    of 1s at least that long, then a set lookup per window of each run: all in C except per run,
    and such runs are rare in real files. Other needles go into one trie-shaped regex.
    """

    def __init__(self, needles: Sequence[bytes]) -> None:
        if any(not n for n in needles):
            raise ValueError("needles must be non-empty byte strings")
        self.needles = [bytes(n) for n in needles]
        self._index: dict[bytes, list[int]] = {}
        for i, n in enumerate(self.needles):
            self._index.setdefault(n, []).append(i)
        self.overlap = max((len(n) for n in self._index), default=1) - 1
        by_len: dict[int, set[bytes]] = {}
        for n in self._index:
            by_len.setdefault(len(n), set()).add(n)
        self._runs: list[tuple[int, bytes, set[bytes]]] = []
        trie_words: list[bytes] = []
        for length, words in sorted(by_len.items()):
            alphabet = set().union(*words)
            if len(alphabet) <= RUN_ALPHABET_MAX:
                table = bytes(int(c in alphabet) for c in range(256))
                self._runs.append((length, table, words))
            else:
                trie_words.extend(words)
        trie_set = set(trie_words)
        lengths = sorted({len(n) for n in trie_words})
        # Trie needles that are proper prefixes of another: found together with the longer one.
        self._prefixes = {
            n: [n[:k] for k in lengths if k < len(n) and n[:k] in trie_set] for n in trie_words
        }
        self._trie = (
            re.compile(b"(?=(" + _trie_regex(trie_words) + b"))", re.DOTALL) if trie_words else None
        )

    def scan(self, data: bytes, found: set[int]) -> None:
        """Add to ``found`` the indices of the needles occurring in ``data``."""
        index = self._index
        for length, table, words in self._runs:
            marks, ones, pos = data.translate(table), b"\x01" * length, 0
            while (start := marks.find(ones, pos)) >= 0:
                end = marks.find(b"\x00", start + length)
                end = len(data) if end < 0 else end
                for i in range(start, end - length + 1):
                    w = data[i : i + length]
                    if w in words:
                        found.update(index[w])
                pos = end
        if self._trie is not None:
            for m in self._trie.finditer(data):
                hit = m.group(1)
                for n in (hit, *self._prefixes[hit]):
                    found.update(index[n])

    def done(self, found: set[int]) -> bool:
        return len(found) == len(self.needles)

    def scan_stream(
        self, read: Callable[[int], bytes], found: set[int], chunk_size: int = CHUNK_SIZE
    ) -> None:
        """Scan everything ``read(n)`` returns until it returns b''; stop early once all hit."""
        tail = b""
        while not self.done(found):
            chunk = read(chunk_size)
            if not chunk:
                return
            buf = tail + chunk
            self.scan(buf, found)
            tail = buf[-self.overlap :] if self.overlap else b""


def _trie_regex(words: list[bytes]) -> bytes:
    """A regex (bytes) matching exactly ``words``, longest alternative first at each branch."""
    if not words:
        return b"(?!)"
    trie: dict = {}
    for w in words:
        node = trie
        for b in w:
            node = node.setdefault(b, {})
        node[None] = True
    return _emit(trie)


def _emit(node: dict) -> bytes:
    # Collapse single-child chains into literal runs to keep the pattern small and shallow.
    run = bytearray()
    while len(node) == 1 and None not in node:
        ((b, child),) = node.items()
        run.append(b)
        node = child
    lit = re.escape(bytes(run))
    branches = [re.escape(bytes([b])) + _emit(child) for b, child in node.items() if b is not None]
    if not branches:
        return lit
    body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
    if None in node:  # a word ends here: the longer continuations are optional (greedy)
        return lit + b"(?:" + body + b")?"
    return lit + body


def scan_path(path: Path, needles: Sequence[bytes], *, chunk_size: int = CHUNK_SIZE) -> set[int]:
    """Indices of ``needles`` found in the contents of any file or the target of any symlink
    under ``path`` (a file, symlink or directory; symlinks are never followed)."""
    matcher = Matcher(needles)
    found: set[int] = set()
    if not matcher.needles:
        return found
    _scan_fs(os.fsencode(path), matcher, found, chunk_size)
    return found


def _scan_fs(path: bytes, matcher: Matcher, found: set[int], chunk_size: int) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        matcher.scan(os.readlink(path), found)
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb", buffering=0) as f:
            matcher.scan_stream(f.read, found, chunk_size)
    elif stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            entries = sorted(e.path for e in it)
        for entry in entries:
            if matcher.done(found):
                return
            _scan_fs(entry, matcher, found, chunk_size)


def scan_node(
    store: Store, node: Node, needles: Sequence[bytes], *, chunk_size: int = CHUNK_SIZE
) -> set[int]:
    """Like ``scan_path`` over a castore node; raises NotFound if an object is missing.

    Identical subtrees and blobs (same digest) are scanned once.
    """
    matcher = Matcher(needles)
    found: set[int] = set()
    if matcher.needles:
        _scan_node(store, node, matcher, found, chunk_size, set())
    return found


def _scan_node(
    store: Store, node: Node, m: Matcher, found: set[int], chunk_size: int, seen: set[Digest]
) -> None:
    if m.done(found):
        return
    if isinstance(node, FileNode):
        if node.digest in seen:
            return
        seen.add(node.digest)
        f = store.open_blob(node.digest)
        if f is None:
            raise NotFound(f"blob {node.digest} missing from the store")
        with f:
            m.scan_stream(f.read, found, chunk_size)
    elif isinstance(node, DirectoryNode):
        if node.digest in seen:
            return
        seen.add(node.digest)
        directory = store.get_directory(node.digest)
        if directory is None:
            raise NotFound(f"directory {node.digest} missing from the store")
        for _name, child in directory:
            _scan_node(store, child, m, found, chunk_size, seen)
    else:
        m.scan(node.target, found)
