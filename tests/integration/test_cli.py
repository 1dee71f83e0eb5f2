"""The ``ocibuild`` command as a user runs it: exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.runc


def ocibuild(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OCIBUILD_STORE": str(tmp / "store")}
    return subprocess.run([sys.executable, "-m", "pytest_ocibuild", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def request(tmp: Path, script: str, extra: str = "") -> Path:
    path = tmp / "req.yaml"
    path.write_text(
        "inputs:\n  busybox: {path: /bin/busybox}\n"
        f"command_args: [/inputs/busybox, sh, -c, {json.dumps(script)}]\n"
        f"outputs: [build/out]\n{extra}"
    )
    return path


def test_readme_example_builds(tmp_path: Path) -> None:
    res = ocibuild("build", str(ROOT / "examples/hello.yaml"), "--json",
                   "--export", str(tmp_path / "exp"), tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)["outputs"]["build/out"]
    assert out["type"] == "directory"
    assert (tmp_path / "exp/build/out/greeting").read_text() == "hello from localhost, uid 1000\n"
    assert os.access(tmp_path / "exp/build/out/bin/hi", os.X_OK)
    assert os.readlink(tmp_path / "exp/build/out/link") == "greeting"


def test_human_output_and_spec(tmp_path: Path) -> None:
    req = request(tmp_path, "echo hi > out")
    res = ocibuild("build", str(req), tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("build/out\tfile\t")
    spec = ocibuild("spec", str(req), "--canonical", tmp=tmp_path)
    assert spec.returncode == 0, spec.stderr
    config = json.loads(spec.stdout)
    assert config["process"]["args"][:2] == ["/inputs/busybox", "sh"]
    assert str(tmp_path) not in spec.stdout  # no host paths in the spec


def test_build_failure_exit_1_with_log_tail(tmp_path: Path) -> None:
    res = ocibuild("build", str(request(tmp_path, "echo oops >&2; exit 3")), tmp=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert "oops" in lines
    assert lines[-1] == "ocibuild: error: builder failed with exit code 3"
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("command_args: [a, b\n", "malformed file"),
        ("command_args: x\n", "command_args: expected a list of strings"),
        ("command_args: [x]\noutputs: [/abs]\n", "outputs: '/abs' is absolute"),
        ("command_args: [x]\nbogus: 1\n", "unknown field(s): bogus"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    res = ocibuild("build", str(path), tmp=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr and str(path) in res.stderr
    assert not (tmp_path / "store" / "tmp").exists() or not any(
        (tmp_path / "store" / "tmp").iterdir())


def test_missing_request_file(tmp_path: Path) -> None:
    res = ocibuild("build", str(tmp_path / "nope.yaml"), tmp=tmp_path)
    assert res.returncode == 2 and "cannot read" in res.stderr and res.stderr.count("\n") == 1


def test_missing_runtime_is_one_line(tmp_path: Path) -> None:
    res = ocibuild("build", str(request(tmp_path, "true")), "--runtime", "/nonexistent/runc",
                   tmp=tmp_path)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "/nonexistent/runc" in res.stderr


def test_add_prints_node(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("Hello World!")
    res = ocibuild("add", str(tmp_path / "f"), tmp=tmp_path)
    assert res.returncode == 0
    node = json.loads(res.stdout)
    assert node["digest"] == "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
