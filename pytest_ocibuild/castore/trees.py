"""Read trees back out of a castore: ``walk`` (NAR order), ``tree_dict``, ``export``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import NotFound, StoreError

CHUNK = 1 << 20  # bytes copied at a time by export
TreeEntry = tuple[str] | tuple[str, str] | tuple[str, str, int, bool]


def walk(store: Store, node: Node, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
    """Yield ``(path, node)`` for ``node`` and everything below it, in NAR order.

    Pre-order, children sorted bytewise by name. The root's path is ``prefix``; a child's is
    ``prefix/name`` (just ``name`` when ``prefix`` is empty). Missing directories raise NotFound.
    """
    stack: list[tuple[bytes, Node]] = [(prefix, node)]
    while stack:
        path, current = stack.pop()
        yield path, current
        if isinstance(current, DirectoryNode):
            directory = get_directory(store, current.digest)
            base = path + b"/" if path else b""
            stack.extend((base + name, child) for name, child in reversed(list(directory)))


def get_directory(store: Store, digest: Digest) -> Directory:
    """The directory ``digest``; NotFound if absent."""
    directory = store.get_directory(digest)
    if directory is None:
        raise NotFound(f"directory {digest.hex} is not in the store")
    return directory


def tree_dict(store: Store, node: Node) -> dict[str, TreeEntry]:
    """A plain description of a tree, keyed by relative path (``""`` is the root).

    Values: ``("file", digest_hex, size, executable)``, ``("dir",)`` or ``("symlink", target)``;
    paths and targets are decoded with ``os.fsdecode``.
    """
    out: dict[str, TreeEntry] = {}
    for path, n in walk(store, node):
        if isinstance(n, FileNode):
            out[os.fsdecode(path)] = ("file", n.digest.hex, n.size, n.executable)
        elif isinstance(n, DirectoryNode):
            out[os.fsdecode(path)] = ("dir",)
        else:
            out[os.fsdecode(path)] = ("symlink", os.fsdecode(n.target))
    return out


def export(store: Store, node: Node, dest: Path | str) -> None:
    """Write the tree ``node`` to ``dest``, which must not exist yet.

    Files are 0644 (0755 if executable) and directories 0755, so users can modify and delete
    the result; blobs are verified as they are copied. On failure nothing is left at ``dest``.
    """
    root = os.fsencode(dest)
    if os.path.lexists(root):
        raise StoreError(f"{os.fsdecode(root)}: already exists, refusing to overwrite",
                         reason="exists")
    os.makedirs(os.path.dirname(root) or b".", exist_ok=True)
    try:
        for rel, n in walk(store, node):
            target = root + b"/" + rel if rel else root
            if isinstance(n, DirectoryNode):
                os.mkdir(target)
                os.chmod(target, 0o755)
            elif isinstance(n, SymlinkNode):
                os.symlink(n.target, target)
            else:
                _export_file(store, n, target)
    except BaseException:
        if os.path.isdir(root) and not os.path.islink(root):
            shutil.rmtree(root, ignore_errors=True)
        elif os.path.lexists(root):
            os.unlink(root)
        raise


def _export_file(store: Store, node: FileNode, target: bytes) -> None:
    mode = 0o755 if node.executable else 0o644
    src = store.open_blob(node.digest)
    if src is None:
        raise NotFound(f"blob {node.digest.hex} ({os.fsdecode(target)}) is not in the store")
    with src, open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
        os.fchmod(out.fileno(), mode)  # not subject to the umask
        shutil.copyfileobj(src, out, CHUNK)
