"""Shared fixtures for the Nix layer tests: captured .drv files and a live nix-instantiate."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_ocibuild.nix.derivation import Derivation, parse_drv

FIXTURES = Path(__file__).parent / "fixtures"
PROBES = Path(__file__).parents[2] / "nix" / "probes"
DRV_FILES = sorted(FIXTURES.glob("*.drv"))

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None,
                               reason="needs nix-instantiate on PATH")


def fixture_resolver(drv_path: str) -> Derivation:
    """Resolve input derivations from tests/nix/fixtures."""
    name = drv_path.rsplit("/", 1)[1]
    return parse_drv((FIXTURES / name).read_bytes(), source=drv_path)


@pytest.fixture(scope="session")
def show_derivation() -> dict[str, dict]:
    """``nix show-derivation`` output captured for every fixture."""
    return json.loads((FIXTURES / "show-derivation.json").read_text())



def instantiate(probe: str, attr: str, bbdir: Path, *extra: str) -> str:
    """Run nix-instantiate on ``probes/<probe>`` and return the .drv path."""
    out = subprocess.run(
        ["nix-instantiate", *extra, str(PROBES / probe), "--arg", "bbdir", str(bbdir), "-A", attr],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return out.split("!", 1)[0]


def probe_attrs(probe: str) -> list[str]:
    """Attribute names of a probe file, read without Nix (``  name = `` at two-space indent)."""
    import re

    text = (PROBES / probe).read_text()
    body = text[text.index("in rec {"):]
    return re.findall(r"^  ([a-z][a-z0-9-]*) = ", body, re.M)
