"""flake.nix evaluates: every output, with nixpkgs replaced by a stub (no network here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).resolve().parent / "nixpkgs-stub"
NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]

pytestmark = pytest.mark.skipif(shutil.which("nix") is None,
                                reason="nix is not installed (apt-get install nix-bin)")


def nix(*args: str, flake: Path) -> subprocess.CompletedProcess[str]:
    cmd = [*NIX, *args, "--no-write-lock-file", "--override-input", "nixpkgs", f"path:{STUB}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=flake)


@pytest.fixture(scope="module")
def flake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flake.nix alone in a directory (its outputs evaluate without the rest of the tree)."""
    d = tmp_path_factory.mktemp("flake")
    shutil.copy(ROOT / "flake.nix", d / "flake.nix")
    return d


def test_flake_check_evaluates(flake: Path) -> None:
    res = nix("flake", "check", "--no-build", f"path:{flake}", flake=flake)
    assert res.returncode == 0, res.stderr


def test_flake_outputs(flake: Path) -> None:
    res = nix("flake", "show", "--json", f"path:{flake}", flake=flake)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    for system in ("x86_64-linux", "aarch64-linux"):
        assert set(shown["packages"][system]) == {"default", "pytest-ocibuild"}
        assert set(shown["devShells"][system]) == {"default"}
        assert set(shown["checks"][system]) == {"unit", "package"}


def test_check_runs_existing_test_files(flake: Path) -> None:
    res = nix("eval", "--raw", f"path:{flake}#checks.x86_64-linux.unit.script", flake=flake)
    assert res.returncode == 0, res.stderr
    named = [w for w in res.stdout.split() if w.startswith("tests/")]
    assert named and all((ROOT / w).exists() for w in named), named
