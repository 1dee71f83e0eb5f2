"""``ocibuild doctor``: its report on this machine (as root) and as a user without subuid."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build import doctor
from pytest_ocibuild.build.doctor import Check, cgroup_version, check_disk, check_runtime

PKG = Path(doctor.__file__).resolve().parents[1]  # the pytest_ocibuild package
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates users (needs root)")

V2 = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
HYBRID = ("30 1 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"
          "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
          "32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
V1 = ("30 1 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"
      "32 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n")


@pytest.mark.parametrize(("text", "version"), [(V2, "v2"), (HYBRID, "hybrid"), (V1, "v1"),
                                               ("", "none")], ids=["v2", "hybrid", "v1", "none"])
def test_cgroup_version_from_mountinfo(text: str, version: str) -> None:
    assert cgroup_version(text) == version


def test_cgroup_version_of_this_machine() -> None:
    fstype = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True,
                            text=True, check=True).stdout.strip()
    if fstype == "cgroup2fs":
        assert cgroup_version() == "v2"
    else:
        expected = "hybrid" if os.path.ismount("/sys/fs/cgroup/unified") else "v1"
        assert cgroup_version() == expected


def test_runtime_found_off_path_names_the_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    fake = sbin / "doctor-rt"
    fake.write_text("#!/bin/sh\necho 'doctor-rt version 9.9'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(doctor, "SBIN", (str(sbin),))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    c = check_runtime("doctor-rt")
    assert (c.ok, c.fix) == (False, f'export PATH="$PATH:{sbin}"')
    monkeypatch.setenv("PATH", str(sbin))
    assert check_runtime("doctor-rt") == Check("doctor-rt", True, f"doctor-rt version 9.9 ({fake})")


def test_disk_below_minimum_fails_with_a_fix(tmp_path: Path) -> None:
    assert check_disk(tmp_path, minimum=1).ok
    c = check_disk(tmp_path, minimum=1 << 62)
    assert not c.ok and "GiB free on" in c.detail and c.fix.startswith("ocibuild store gc")


def test_report_on_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = doctor.run(tmp_path / "store")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(doctor.CHECKS) + 1  # and "<runtime> builds"
    by_name = {line.split(": ", 1)[0].split(None, 1)[1]: line for line in lines}
    runc = shutil.which("runc")
    if runc is None:
        assert by_name["runc"].startswith("FAIL  runc: not") and code == 1
    else:
        version = subprocess.run([runc, "--version"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[0]
        assert by_name["runc"] == f"ok    runc: {version} ({runc})"
    assert by_name["cgroups"].split(": ", 1)[1].startswith(cgroup_version())
    assert by_name["store"].startswith(f"ok    store: {tmp_path / 'store'} writable")
    if os.geteuid() == 0:
        assert by_name["subuid/subgid"].startswith("ok    subuid/subgid: not needed as root")
    failed = [line for line in lines if line.startswith("FAIL")]
    assert code == (1 if failed else 0)
    assert all("; fix: " in line for line in failed)

    assert doctor.run(tmp_path / "store", as_json=True) == code
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is (code == 0)
    assert [c["name"] for c in report["checks"]] == list(by_name)
    assert {c["name"] for c in report["checks"] if c["required"] and not c["ok"]} == {
        line.split(": ", 1)[0][6:] for line in failed}


def test_first_failure_is_the_first_failing_required_check(tmp_path: Path) -> None:
    doctor.first_failure.cache_clear()
    expected = next((c for c, r in doctor.run_checks(tmp_path) if r and not c.ok), None)
    found = doctor.first_failure(tmp_path)
    assert found == expected
    assert doctor.first_failure(tmp_path) is found  # cached per process


def test_cli_doctor_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ocibuild.cli import main

    code = main(["doctor", "--json", "--store", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ok"] else 1)
    assert len(report["checks"]) == len(doctor.CHECKS) + 1


@contextlib.contextmanager
def temporary_user(*, subids: bool) -> Iterator[str]:
    """A user made with ``useradd`` (with or without /etc/subuid and /etc/subgid ranges),
    removed afterwards with its home and per-user directory."""
    name = f"ocidoc{uuid.uuid4().hex[:8]}"
    count = "65536" if subids else "0"
    subprocess.run(["useradd", "-m", "-K", f"SUB_UID_COUNT={count}", "-K",
                    f"SUB_GID_COUNT={count}", name], check=True, capture_output=True)
    uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                             check=True).stdout)
    try:
        yield name
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        shutil.rmtree(f"/tmp/ocibuild-{uid}", ignore_errors=True)


def run_as(user: str, pkg_parent: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest_ocibuild.build.doctor ARGS`` as ``user`` (login environment, with
    /usr/sbin on PATH as a normal user needs for runc), on Debian's /usr/bin/python3."""
    path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    cmd = (f"PATH={path} PYTHONPATH={pkg_parent} /usr/bin/python3 -m "
           f"pytest_ocibuild.build.doctor {' '.join(args)}")
    return subprocess.run(["su", "-", user, "-c", cmd], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    """A copy of the package that any user can read (the venv may be under /root)."""
    parent = Path(tempfile.mkdtemp(prefix="ocidoc-pkg-", dir="/tmp"))
    try:
        shutil.copytree(PKG, parent / "pytest_ocibuild",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(parent)], check=True)
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@as_root
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3") or not shutil.which("useradd"),
                    reason="needs /usr/bin/python3 and useradd")
def test_user_without_subuid_gets_one_failing_line(readable_copy: Path) -> None:
    with temporary_user(subids=False) as user:
        p = run_as(user, readable_copy)
        failed = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
        assert p.returncode == 1, p.stdout + p.stderr
        assert "Traceback" not in p.stderr
        assert len(failed) == 1, p.stdout
        line = failed[0]
        assert line.startswith(f"FAIL  subuid/subgid: no range for {user!r} in /etc/subuid "
                               "and /etc/subgid; fix: sudo usermod --add-subuids "), line
        report = json.loads(run_as(user, readable_copy, "--json").stdout)
        assert report["ok"] is False
        assert [c["name"] for c in report["checks"] if not c["ok"] and c["required"]] == [
            "subuid/subgid"]

        # A store where the user may not write is a second failing line, naming the place.
        p = run_as(user, readable_copy, "--store", "/var/lib/ocidoc-store")
        store = [ln for ln in p.stdout.splitlines() if ln.startswith("FAIL  store: ")]
        assert store == [f"FAIL  store: /var/lib is not writable by {user}; fix: sudo install "
                         f"-d -o {user} /var/lib/ocidoc-store (or use --store DIR)"], p.stdout

        # The printed fix works: run it (we are root, so without sudo) and check again.
        fix = line.split("; fix: sudo ", 1)[1].split()
        assert fix[0] == "usermod" and fix[-1] == user
        subprocess.run(fix, check=True, capture_output=True)
        again = run_as(user, readable_copy)
        sub = [ln for ln in again.stdout.splitlines() if "subuid/subgid" in ln]
        assert sub and sub[0].startswith("ok    subuid/subgid: uids "), again.stdout
        assert again.returncode == 0, again.stdout


def test_runtime_option_makes_that_backend_required() -> None:
    """``--runtime bwrap``: bwrap's lines are required (FAIL, not warn) and its own check runs."""
    from pytest_ocibuild.build.doctor import run_checks

    required = {c.name: r for c, r in run_checks(runtime="bwrap") if c.name in ("runc", "bwrap")}
    assert required == {"runc": False, "bwrap": True}
    res = subprocess.run([sys.executable, "-m", "pytest_ocibuild", "doctor", "--runtime", "bwrap"],
                         capture_output=True, text=True, timeout=120)
    assert "bwrap builds: " in res.stdout, res.stdout
