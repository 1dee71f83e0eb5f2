"""pytest-ocibuild: sandboxed builds in runc over a blake3 content-addressed store."""

from __future__ import annotations

__version__ = "0.1.0"
