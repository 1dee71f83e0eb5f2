"""Every command turns an expected failure into one line and the documented exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import HELLO, ROOT, assert_one_error_line, ocibuild

STORE_COMMANDS = [
    ("build", str(HELLO)),
    ("spec", str(HELLO)),
    ("add", str(HELLO)),
    ("log", "abcd"),
    ("store", "df"),
    ("store", "gc"),
    ("store", "verify"),
    ("store", "purge"),
    ("cache", "ls"),
    ("cache", "rm", "x"),
    ("nix-build", str(ROOT / "nix" / "default.nix"), "-A", "deps.a"),
    ("image", str(HELLO), "--out", "/tmp/never-written"),
]


@pytest.mark.parametrize("kind", ["below-dev-null", "a-file", "read-only", "read-only-itself"])
@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: " ".join(c[:2]).split("/")[0])
def test_unusable_store_is_one_line_exit_2(bad_stores: dict[str, Path], kind: str,
                                           command: tuple[str, ...], tmp_path: Path) -> None:
    store = bad_stores[kind]
    res = ocibuild(*command, "--store", str(store), store=tmp_path / "unused")
    assert_one_error_line(res, 2, f"store {store}:", "writable directory")
    # the same through $OCIBUILD_STORE
    res = ocibuild(*command, store=store)
    assert_one_error_line(res, 2, f"store {store}:")


def _closed_pipe_run(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is already gone (what ``| head`` leads to)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return ocibuild(*args, store=store, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [("spec", str(HELLO)), ("--help",), ("store", "df"),
                                  ("store", "df", "--json")])
def test_closed_stdout_is_quiet(args: tuple[str, ...], tmp_path: Path) -> None:
    res = _closed_pipe_run(*args, store=tmp_path / "store")
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.returncode in (0, 141), res.stderr  # argparse's --help exits inside print


@pytest.mark.runc
def test_build_into_a_closed_pipe(tmp_path: Path) -> None:
    for extra in ((), ("--json",)):
        res = _closed_pipe_run("build", str(HELLO), *extra, store=tmp_path / "store")
        assert res.returncode == 141 and "Traceback" not in res.stderr, res.stderr


@pytest.mark.runc
def test_head_of_a_pipe(tmp_path: Path) -> None:
    env = {**os.environ, "OCIBUILD_STORE": str(tmp_path / "store")}
    cmd = (f"{sys.executable} -m pytest_ocibuild spec {HELLO} | head -1; "
           f"{sys.executable} -m pytest_ocibuild build --json {HELLO} | head -c 10")
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)
    assert res.stdout.startswith("{\n{"), res.stdout
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr


@pytest.mark.runc
def test_interrupt_exits_130(tmp_path: Path) -> None:
    req = tmp_path / "sleep.yaml"
    req.write_text("inputs:\n  busybox: {path: /bin/busybox}\n"
                   "command_args: [/inputs/busybox, sh, -c, 'echo started; sleep 60']\n")
    env = {**os.environ, "OCIBUILD_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest_ocibuild", "build", str(req),
                             "--no-cache"], env=env, stderr=subprocess.PIPE, text=True)
    log_dir = tmp_path / "store" / "tmp"
    try:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _started(log_dir):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "ocibuild: interrupted" and "Traceback" not in err


def _started(staging: Path) -> bool:
    """The build's log (in the store's staging directory) shows it is running."""
    return staging.is_dir() and any(b"started" in p.read_bytes() for p in staging.rglob("*")
                                    if p.is_file())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("build", str(HELLO), "--timeout", "0"), ["--timeout", "more than 0"]),
        (("build", str(HELLO), "--timeout", "-5"), ["--timeout", "more than 0"]),
        (("build", str(HELLO), "--timeout", "soon"), ["--timeout", "not a number"]),
        (("store", "gc", "--max-age", "-1"), ["--max-age", "0 or more"]),
        (("store", "gc", "--grace", "-1"), ["--grace"]),
        (("store", "gc", "--max-size", "-1G"), ["--max-size"]),
        (("nix-build", "x.nix", "--timeout", "-1"), ["--timeout"]),
        (("frobnicate",), ["invalid choice"]),
        (("build",), ["required"]),
        (("add", "/nonexistent/path"), ["/nonexistent/path", "no such file"]),
        (("cache", "rm", "nothing"), ["no cache 'nothing'"]),
        (("log", "not-hex"), ["not-hex"]),
    ],
)
def test_bad_input_is_exit_2(args: tuple[str, ...], words: list[str], tmp_path: Path) -> None:
    res = ocibuild(*args, store=tmp_path / "store")
    assert_one_error_line(res, 2, *words)


def test_a_fifo_cannot_be_added(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    res = ocibuild("add", str(tmp_path / "fifo"), store=tmp_path / "store")
    assert_one_error_line(res, 2, str(tmp_path / "fifo"), "fifo")


def test_gc_refusing_a_negative_age_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("kept\n")
    assert ocibuild("add", str(tmp_path / "f"), store=tmp_path / "store").returncode == 0
    before = sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert ocibuild("store", "gc", "--max-age", "-1", store=tmp_path / "store").returncode == 2
    assert sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file()) == before


@pytest.mark.runc
def test_export_onto_existing_outputs_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "exp" / "build" / "out").mkdir(parents=True)
    res = ocibuild("build", str(HELLO), "--export", str(tmp_path / "exp"),
                   store=tmp_path / "store")
    assert_one_error_line(res, 2, "--export", "already exists")
    (tmp_path / "file").write_text("x")
    res = ocibuild("build", str(HELLO), "--export", str(tmp_path / "file"),
                   store=tmp_path / "store")
    assert_one_error_line(res, 2, "--export", "not a directory")


@pytest.mark.runc
def test_failed_build_json_and_key(tmp_path: Path) -> None:
    req = tmp_path / "fail.yaml"
    req.write_text("inputs:\n  busybox: {path: /bin/busybox}\n"
                   "command_args: [/inputs/busybox, sh, -c, 'echo oops >&2; exit 3']\n"
                   "outputs: [build/out]\n")
    res = ocibuild("build", str(req), "--json", store=tmp_path / "store")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is False
    assert out["failure"]["reason"] == "exit-code" and out["failure"]["exit_code"] == 3
    assert res.stderr.strip().splitlines()[-1] == "ocibuild: error: builder failed with exit code 3"
    log = ocibuild("log", out["key"], store=tmp_path / "store")
    assert log.returncode == 0 and "oops" in log.stdout


@pytest.mark.runc
def test_one_key_names_a_build(tmp_path: Path) -> None:
    res = ocibuild("build", str(HELLO), "--json", store=tmp_path / "store")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is True and "request" not in out
    assert ocibuild("log", out["key"], store=tmp_path / "store").returncode == 0
    human = ocibuild("build", str(HELLO), store=tmp_path / "store")
    assert f"key {out['key'][:16]} (ocibuild log {out['key'][:16]})" in human.stderr


@pytest.mark.runc
def test_keep_bundle_prints_a_path_that_survives_the_next_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    run = tmp_path / "run"  # a per-user dir of this test's own: purge --kept empties it
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    res = ocibuild("build", str(HELLO), "--keep-bundle", "--no-cache", store=store)
    assert res.returncode == 0, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("ocibuild: kept bundle: ")]
    bundle = Path(line.removeprefix("ocibuild: kept bundle: "))
    assert bundle.parent == run / "ocibuild" / "kept" and (bundle / "config.json").is_file()
    assert ocibuild("build", str(HELLO), "--no-cache", store=store).returncode == 0  # purges
    assert (bundle / "config.json").is_file()
    res = ocibuild("build", str(HELLO), "--keep-bundle", "--no-cache", "--json", store=store)
    (second,) = json.loads(res.stdout)["kept_bundles"]
    assert Path(second).parent == bundle.parent and second != str(bundle)
    res = ocibuild("store", "purge", "--kept", "--json", store=store)
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(res.stdout)["kept"]) == sorted([str(bundle), second])
    assert not bundle.exists() and not Path(second).exists()


@pytest.mark.nix
def test_nix_syntax_error_keeps_its_location(tmp_path: Path) -> None:
    import shutil

    if shutil.which("nix-instantiate") is None:
        pytest.skip("needs nix-instantiate (apt-get install nix-bin)")
    bad = tmp_path / "bad.nix"
    bad.write_text("let x = ; in x\n")
    res = ocibuild("nix-build", str(bad), store=tmp_path / "store")
    assert_one_error_line(res, 2, f"cannot evaluate {bad}: syntax error", f"at {bad}:1:9")
