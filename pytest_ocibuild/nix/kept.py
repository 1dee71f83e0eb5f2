"""``--keep-failed``: the executor keeps every bundle (``keep_bundles``); a failed build's
``/build`` is moved out and named to the user, a good build's bundle is removed. Bundles are
``<bundle root>/ocibuild-<pid>-<n>-<request digest[:12]>`` (executor ``CONTAINER_PREFIX``), so
this process's bundles of one request are found by name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.bundle import scratch_name


def kept_bundles(executor: Any, digest_hex: str) -> list[Path]:
    """This process's bundles of the request with this digest, oldest first."""
    root = Path(executor.bundle_root)
    found = root.glob(f"ocibuild-{os.getpid()}-*-{digest_hex[:12]}")
    return sorted(found, key=lambda p: int(p.name.split("-")[2]))


def kept_note(executor: Any, digest_hex: str, drv_path: str) -> str:
    """Nix's ``note: keeping build directory '…'``: the failed build's ``/build`` is moved to
    ``$TMPDIR/nix-build-<drv name>-<random>`` (the bundle itself is purged later, like any
    bundle of a finished process)."""
    bundles = kept_bundles(executor, digest_hex)
    if not bundles:
        return ""
    scratch = bundles[-1] / "scratch" / scratch_name("build")
    dest = Path(tempfile.mkdtemp(prefix=f"nix-build-{os.path.basename(drv_path)}-"))
    try:
        os.rename(scratch, dest)  # mkdtemp made an empty directory: rename replaces it
    except OSError:
        shutil.copytree(scratch, dest, symlinks=True, dirs_exist_ok=True)
    return f"note: keeping build directory '{dest}'"


def drop_kept(executor: Any, digest_hex: str) -> None:
    """Remove the bundles of a request that built."""
    for bundle in kept_bundles(executor, digest_hex):
        remove_tree(bundle)
