"""Plugin tests drive whole pytest runs through pytester."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = "pytester"

BUSYBOX = "/bin/busybox"


def write_cases(pytester: pytest.Pytester, text: str, name: str = "cases/demo.yaml") -> Path:
    """Write a YAML case file (``$BUSYBOX`` is replaced by the busybox path) below pytester."""
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("$BUSYBOX", BUSYBOX))
    return path


@pytest.fixture
def needs_runc() -> None:
    """Builds need runc and busybox; CI installs both, so a missing one is an error there."""
    missing = [tool for tool in ("runc", BUSYBOX) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install runc busybox-static)")
