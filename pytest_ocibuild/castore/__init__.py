"""Content-addressed store compatible with tvix-castore (blake3 blobs, proto directories)."""

from __future__ import annotations

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import (
    Directory,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    validate_name,
)
from pytest_ocibuild.castore.store import Store

__all__ = [
    "Digest",
    "Directory",
    "DirectoryNode",
    "FileNode",
    "Node",
    "Store",
    "SymlinkNode",
    "validate_name",
]
