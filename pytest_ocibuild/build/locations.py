"""Where the store lives by default (a light module: the CLI reads it before anything heavy)."""

from __future__ import annotations

import os
from pathlib import Path


def default_store_dir() -> Path:
    """``$OCIBUILD_STORE`` or the per-user cache dir (``$XDG_CACHE_HOME/ocibuild/store``)."""
    env = os.environ.get("OCIBUILD_STORE")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ocibuild" / "store"
