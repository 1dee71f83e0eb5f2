"""Helpers for driving ``ocibuild`` and pytest as a user does: subprocesses, bad stores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml  # noqa: F401 - one yaml for all in-process pytester runs (tests/plugin/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello.yaml"


def ocibuild(*args: str, store: Path | str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pytest_ocibuild ARGS`` with ``$OCIBUILD_STORE`` set to ``store``."""
    env = {**os.environ, "OCIBUILD_STORE": str(store)}
    env.pop("OCIBUILD_DEBUG", None)
    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "pytest_ocibuild", *args], env=env, text=True,
                          timeout=120, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def assert_one_error_line(res: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit ``code``, no traceback, stderr one ``ocibuild...: error:`` line holding ``words``."""
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ocibuild") and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to: a read-only tmpfs as root, mode 0555 otherwise."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("needs mount(8) to make a read-only directory as root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def bad_stores(tmp_path: Path, read_only_dir: Path) -> dict[str, Path]:
    """Store paths that cannot be used, by kind."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a store\n")
    return {"below-dev-null": Path("/dev/null/store"), "a-file": a_file,
            "read-only": read_only_dir / "store", "read-only-itself": read_only_dir}
