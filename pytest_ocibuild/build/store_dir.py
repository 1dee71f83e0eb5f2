"""Check a store directory before anything is written to it: one line instead of a traceback.

``usable_store_dir`` is called by the CLI (``--store``), ``nix-build`` and the pytest plugin
(``ocibuild_store``) before the store is opened; the message names the directory, the problem
and the setting to change.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pytest_ocibuild.errors import StoreError

HINT = "set --store DIR or $OCIBUILD_STORE to a writable directory"


class StoreUnusable(StoreError):
    """The store directory cannot be used: not a directory, not writable, cannot be made."""

    reason = "store-unusable"


def usable_store_dir(path: str | os.PathLike[str], *, create: bool = True,
                     hint: str = HINT) -> Path:
    """``path`` if it is (or, with ``create``, can be made) a writable directory; else
    StoreUnusable naming it. Nothing is created unless ``create``."""
    store = Path(path)
    problem = _problem(store)
    if problem is None and create:
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problem = os.strerror(e.errno) if e.errno else str(e)
    if problem is not None:
        raise StoreUnusable(f"store {store}: {problem} ({hint})")
    return store


def _problem(store: Path) -> str | None:
    """Why ``store`` cannot be used (None if it can, or an ancestor lets it be made)."""
    probe = store
    while True:
        try:
            is_dir = probe.is_dir()
            exists = is_dir or probe.exists() or probe.is_symlink()
        except OSError as e:  # e.g. ENAMETOOLONG
            return os.strerror(e.errno) if e.errno else str(e)
        if exists:
            break
        if probe.parent == probe:
            return "no such directory"
        probe = probe.parent
    below = probe != store  # the store does not exist yet: probe is its nearest ancestor
    if not is_dir:
        return f"cannot be created: {probe} is not a directory" if below else "not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "on a read-only file system" if _read_only_fs(probe) else "not writable"
        return f"cannot be created: {probe} is {why}" if below else why
    return None


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as e:
        return e.errno == errno.EROFS
