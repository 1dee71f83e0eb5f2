"""Shared set-up of the nix-build glue tests."""

from __future__ import annotations

import shutil
from pathlib import Path


def write_corpus(where: Path, nix: str) -> Path:
    """``where`` holding ``bb/busybox`` (the builders' shell) and ``t.nix`` = ``nix``."""
    (where / "bb").mkdir()
    shutil.copy2("/bin/busybox", where / "bb" / "busybox")
    (where / "t.nix").write_text(nix)
    return where
