"""``ocibuild nix-build``'s start-up path: Nix evaluates while the executor is prepared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ocibuild.build.request import node_to_dict
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.nix.closure import node_from_json
from tests.nixglue.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None or shutil.which("runc") is None
    or os.geteuid() != 0, reason="needs Nix, runc and root")
NIX = """{ bbdir, nonce ? "" }:
let lib = import @ROOT@/nix/lib.nix { inherit bbdir; }; in
{ t = lib.mk "cli-t" "echo ${nonce} > $out" {}; }
""".replace("@ROOT@", str(ROOT))


@pytest.mark.parametrize(("env", "expected"), [
    ({"OCIBUILD_STORE": "/x/store", "XDG_CACHE_HOME": "/c"}, "/x/store"),
    ({"XDG_CACHE_HOME": "/c", "HOME": "/h"}, "/c/ocibuild/store"),
    ({"HOME": "/h"}, "/h/.cache/ocibuild/store"),
])
def test_default_store_dir(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                           expected: str) -> None:
    """One light function gives the default store to the CLI, nix-build and the executor."""
    from pytest_ocibuild.build import executor, locations
    from pytest_ocibuild.nix import command

    for name in ("OCIBUILD_STORE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert locations.default_store_dir() == Path(expected)
    assert command.default_store_dir is executor.default_store_dir is locations.default_store_dir


def test_node_records_round_trip() -> None:
    nodes = [SymlinkNode(b"../x"), SymlinkNode(b"\xff\xfe"), FileNode(Digest.of(b"a"), 1, True),
             FileNode(Digest.of(b"b"), 2, False), DirectoryNode(Digest.of(b"c"), 3)]
    assert [node_from_json(node_to_dict(n)) for n in nodes] == nodes
    for bad in ({"type": "fifo", "digest": "00" * 32, "size": 1},
                {"type": "file", "digest": "zz", "size": 1},
                {"type": "file", "digest": "00" * 32, "size": -1},
                {"type": "directory", "size": 1}):
        with pytest.raises((ValueError, KeyError)):
            node_from_json(bad)


def test_importing_the_nix_package_imports_no_submodule() -> None:
    code = ("import sys, pytest_ocibuild.nix as n; "
            "print(sorted(m for m in sys.modules if m.startswith('pytest_ocibuild.nix.'))); "
            "print(all(getattr(n, a) is not None for a in n.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_ocibuild", "nix-build", "--store",
                           str(tmp_path / "store"), *args], capture_output=True, text=True,
                          check=False)


@needs_nix
def test_evaluation_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.nix").write_text("{ x = ; }")
    res = run_cli(tmp_path, str(tmp_path / "bad.nix"))
    assert res.returncode == 2 and res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith(f"ocibuild: error: cannot evaluate {tmp_path / 'bad.nix'}: "
                           "syntax error"), res.stderr


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path, NIX)


def build_args(corpus: Path) -> list[str]:
    return ["nix-build", "--json", "--store", str(corpus / "store"), str(corpus / "t.nix"),
            "-A", "t", "--arg", "bbdir", str(corpus / "bb"), "--argstr", "nonce",
            os.urandom(6).hex()]


@needs_nix
def test_the_build_path_imports_no_yaml_jsonschema_or_pytest(corpus: Path) -> None:
    code = ("import sys; from pytest_ocibuild.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'yaml', 'jsonschema', 'pytest', '_pytest', 'syrupy'}), file=sys.stderr); "
            "sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, *build_args(corpus)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines()[-1] == "[]"
    out = json.loads(res.stdout)["outputs"]["out"]
    assert out["path"].endswith("-cli-t") and not os.path.exists(out["path"])


@needs_nix
def test_what_a_crashed_run_left_is_purged(corpus: Path) -> None:
    """The purge runs beside the build now, not before it: it still happens."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid nobody has (the next ones are handed out after it)
    from pytest_ocibuild.build.locations import bundle_root

    left = bundle_root() / f"ocibuild-{gone.pid}-0-0123456789ab"  # bundles are per user
    (left / "scratch").mkdir(parents=True)
    res = subprocess.run([sys.executable, "-m", "pytest_ocibuild", *build_args(corpus)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert not left.exists()
