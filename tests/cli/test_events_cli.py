"""``ocibuild build --events`` (JSON lines, schema-checked) and ``-L`` (live log on stderr)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from pytest_ocibuild.build.events import SCHEMA
from tests.cli.conftest import HELLO, ROOT, ocibuild

pytestmark = pytest.mark.runc


@pytest.fixture(autouse=True)
def _needs_runc() -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc); CI installs it")


def echoing(tmp_path: Path, script: str, name: str = "echo.yaml") -> Path:
    """A request file like examples/hello.yaml whose build runs ``script``."""
    path = tmp_path / name
    path.write_text(json.dumps({
        "inputs": {"busybox": {"path": "/bin/busybox"}},
        "command_args": ["/inputs/busybox", "sh", "-c", script],
        "working_dir": "build", "scratch_paths": ["build"], "outputs": ["build/out"]}))
    return path


def events_of(stdout: str) -> list[dict[str, object]]:
    """Each line's object, checked against the schema."""
    out = []
    for line in stdout.splitlines():
        event = json.loads(line)
        jsonschema.validate(event, SCHEMA)
        out.append(event)
    return out


def test_events_are_json_lines_with_a_log_before_finished(tmp_path: Path) -> None:
    req = echoing(tmp_path, "echo hello from the build; mkdir out; echo x > out/x")
    res = ocibuild("build", "--events", str(req), store=tmp_path / "s")
    assert res.returncode == 0, res.stderr
    seen = events_of(res.stdout)
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "queued" and kinds[-1] == "finished"
    assert "started" in kinds and kinds.index("log") < kinds.index("finished")
    log = seen[kinds.index("log")]
    assert log["stream"] == "stdout" and log["text"] == "hello from the build\n"
    assert seen[-1]["cached"] is False
    again = events_of(ocibuild("build", "--events", str(req), store=tmp_path / "s").stdout)
    assert [e["event"] for e in again] == ["queued", "finished"]
    assert again[-1]["cached"] is True and again[-1]["outputs"] == seen[-1]["outputs"]


def test_hello_example_events_pass_the_schema(tmp_path: Path) -> None:
    res = ocibuild("build", "--events", str(HELLO), store=tmp_path / "s")
    assert res.returncode == 0, res.stderr
    seen = events_of(res.stdout)
    assert seen[-1]["event"] == "finished" and len(seen[-1]["outputs"]) == 1  # type: ignore


def test_a_slow_builds_first_line_reaches_stdout_at_once(tmp_path: Path) -> None:
    req = echoing(tmp_path, "echo first; sleep 2; echo second; mkdir out")
    env = {**os.environ, "OCIBUILD_STORE": str(tmp_path / "s")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest_ocibuild", "build", "--events",
                             str(req)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT)
    assert proc.stdout is not None
    arrivals: list[tuple[float, dict[str, object]]] = []
    for line in proc.stdout:  # CLOCK_MONOTONIC is the same for every process
        arrivals.append((time.monotonic(), json.loads(line)))
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    logs = [(t, e) for t, e in arrivals if e["event"] == "log"]
    finished = next(e for _, e in arrivals if e["event"] == "finished")
    assert [e["text"] for _, e in logs] == ["first\n", "second\n"]
    arrived, first = logs[0]
    assert arrived - float(first["time"]) < 0.5  # type: ignore[arg-type]
    assert float(finished["time"]) - arrived > 1.5  # type: ignore[arg-type]


def test_print_build_logs_streams_to_stderr(tmp_path: Path) -> None:
    req = echoing(tmp_path, "echo to stdout; echo to stderr >&2; mkdir out")
    shown = ocibuild("build", "-L", "--no-cache", str(req), store=tmp_path / "s")
    assert shown.returncode == 0, shown.stderr
    assert "to stdout\nto stderr\n" in shown.stderr and "to stdout" not in shown.stdout
    hidden = ocibuild("build", "--no-print-build-logs", "--no-cache", str(req),
                      store=tmp_path / "s")
    assert hidden.returncode == 0 and "to stdout" not in hidden.stderr


@pytest.mark.parametrize(("script", "extra", "reason", "code"), [
    ("echo failing; exit 3", (), "exit-code", 3),
    ("sleep 30", ("--timeout", "0.5"), "timeout", None),
    ("echo no output made", (), "missing-output", None),
])
def test_a_failure_is_a_failed_event_with_its_reason(
    tmp_path: Path, script: str, extra: tuple[str, ...], reason: str, code: int | None,
) -> None:
    res = ocibuild("build", "--events", *extra, str(echoing(tmp_path, script)),
                   store=tmp_path / "s")
    assert res.returncode == 1, res.stderr
    seen = events_of(res.stdout)
    assert seen[-1]["event"] == "failed", seen
    assert (seen[-1]["reason"], seen[-1]["exit_code"]) == (reason, code)
    assert "Traceback" not in res.stderr and "error" in res.stderr


def test_events_and_json_are_refused_together(tmp_path: Path) -> None:
    res = ocibuild("build", "--events", "--json", str(HELLO), store=tmp_path / "s")
    assert res.returncode == 2 and "--events" in res.stderr


NIX = """{ bbdir, nonce ? "" }:
let lib = import @ROOT@/nix/lib.nix { inherit bbdir; };
    dep = lib.mk "ev-dep" "echo dep says ${nonce}; echo x > $out" {}; in
{ t = lib.mk "ev-top" "echo top says hi; echo half-line >&2; cat ${dep} > $out" {}; }
""".replace("@ROOT@", str(ROOT))


@pytest.mark.skipif(shutil.which("nix-instantiate") is None or os.geteuid() != 0,
                    reason="needs Nix and root")
def test_nix_build_events_and_labelled_logs(tmp_path: Path) -> None:
    from tests.nixglue.conftest import write_corpus

    corpus = write_corpus(tmp_path, NIX)
    res = ocibuild("nix-build", "--events", "-L", str(corpus / "t.nix"), "-A", "t",
                   "--arg", "bbdir", str(corpus / "bb"), "--argstr", "nonce",
                   os.urandom(6).hex(), store=tmp_path / "s")
    assert res.returncode == 0, res.stderr
    seen = events_of(res.stdout)
    finished = [e["build"] for e in seen if e["event"] == "finished"]
    assert finished == ["ev-dep", "ev-top"]  # dependencies first
    top_logs = [e["text"] for e in seen if e["event"] == "log" and e["build"] == "ev-top"]
    assert "top says hi\n" in top_logs
    lines = res.stderr.splitlines()
    assert "ev-top> top says hi" in lines and "ev-top> half-line" in lines
    assert any(line.startswith("ev-dep> dep says ") for line in lines)
