"""Resource limits (build/limits.py): each stops a hostile build with its own reason.

Real runc builds with small limits: a fork bomb, a memory hog, a silent build, builds
filling the disk with one big file, with many small ones and through /tmp.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.limits import DEFAULT_MEMORY, DEFAULT_PIDS, Limits, parse_size
from pytest_ocibuild.build.request import BuildRequest, Constraints
from pytest_ocibuild.build.request_io import request_from_dict
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.errors import BuildFailed, InvalidRequest

AS_ROOT = os.geteuid() == 0
needs_cgroups = pytest.mark.skipif(
    not AS_ROOT, reason="cgroup limits need root on cgroup v1 (a normal user gets "
    "RLIMIT_NPROC for pids and no memory limit: see build/limits.py)")


@pytest.fixture
def lex(tmp_path: Path, shared_store: LocalStore) -> Iterator[Executor]:
    runtime = RuncRuntime("runc", state_dir=tmp_path / "runc-state")
    ex = Executor(shared_store, inputs=open_input_provider("materialize"), runtime=runtime,
                  bundle_root=tmp_path / "bundles")
    yield ex
    left = runtime.list()
    runtime.purge("")
    assert left == [], f"containers left behind: {left}"


def _sh(busybox: Node, script: str, limits: Limits, **kw: object) -> BuildRequest:
    return BuildRequest(inputs={"busybox": busybox},
                        command_args=("/inputs/busybox", "sh", "-c", script),
                        environment_vars=(), limits=limits, **kw)  # type: ignore[arg-type]


def _fails(ex: Executor, request: BuildRequest) -> BuildFailed:
    with pytest.raises(BuildFailed) as failed:
        ex.build(request)
    return failed.value


def test_limits_parse_with_units_and_stay_out_of_the_digest(busybox: Node) -> None:
    r = request_from_dict({"command_args": ["x"], "limits": {"memory": "512M", "pids": 64,
                                                             "max_silent_time": 1.5}})
    assert r.limits == Limits(memory=512 << 20, pids=64, max_silent_time=1.5)
    assert r.digest == request_from_dict({"command_args": ["x"]}).digest
    assert r.to_dict()["limits"] == {"memory": 512 << 20, "pids": 64, "max_silent_time": 1.5}
    assert parse_size("1.5GiB", "x") == 3 << 29
    for bad, word in (({"memory": "lots"}, "not a size"), ({"pids": 0}, "more than 0"),
                      ({"pids": "9"}, "whole number"), ({"nproc": 3}, "unknown field"),
                      ({"max_silent_time": -1}, "seconds")):
        with pytest.raises(InvalidRequest, match=word):
            request_from_dict({"command_args": ["x"], "limits": bad})


def test_defaults_are_in_the_spec(lex: Executor, busybox: Node) -> None:
    spec = lex.spec(BuildRequest(command_args=("x",)))
    rlimits = {r["type"]: r["hard"] for r in spec["process"]["rlimits"]}
    assert rlimits["RLIMIT_FSIZE"] == 10 * (1 << 30) + 1
    if AS_ROOT:
        res = spec["linux"]["resources"]
        assert res["pids"] == {"limit": DEFAULT_PIDS}
        assert res["memory"] == {"limit": DEFAULT_MEMORY, "swap": DEFAULT_MEMORY}
        big = lex.spec(BuildRequest(command_args=("x",),
                                    constraints=Constraints(min_memory=DEFAULT_MEMORY * 2)))
        assert big["linux"]["resources"]["memory"]["limit"] == DEFAULT_MEMORY * 2
    else:
        assert "resources" not in spec["linux"]
        assert rlimits["RLIMIT_NPROC"] == DEFAULT_PIDS
    lex.limits = Limits(pids=77)  # the executor's setting, under the request's own
    assert _pids(lex.spec(BuildRequest(command_args=("x",)))) == 77
    assert _pids(lex.spec(BuildRequest(command_args=("x",), limits=Limits(pids=5)))) == 5


def _pids(spec: dict) -> int:
    if AS_ROOT:
        return int(spec["linux"]["resources"]["pids"]["limit"])
    return next(r["hard"] for r in spec["process"]["rlimits"] if r["type"] == "RLIMIT_NPROC")


@pytest.mark.runc
def test_a_fork_bomb_stops_at_the_pids_limit(lex: Executor, busybox: Node) -> None:
    script = ("n=0; while [ $n -lt 300 ]; do /inputs/busybox sleep 30 & n=$((n+1)); done; "
              "echo started $n; exit 0")
    e = _fails(lex, _sh(busybox, script, Limits(pids=40)))
    if AS_ROOT:
        assert e.reason == "too-many-processes", e
        assert "limit of 40 processes" in e.message
    else:
        assert e.reason == "exit-code", e
    assert "can't fork" in e.detail or "Resource temporarily unavailable" in e.detail, e.detail


@needs_cgroups
@pytest.mark.runc
def test_a_memory_hog_is_reported_as_out_of_memory(lex: Executor, busybox: Node) -> None:
    hog = "/inputs/busybox awk 'BEGIN { s = \"x\"; while (1) s = s s }'"
    e = _fails(lex, _sh(busybox, hog, Limits(memory="64M")))
    assert e.reason == "out-of-memory", e
    assert "64 MiB" in e.message and "limits.memory" in e.message


@pytest.mark.runc
def test_a_silent_build_is_killed_after_max_silent_time(lex: Executor, busybox: Node) -> None:
    start = time.monotonic()
    e = _fails(lex, _sh(busybox, "echo first; /inputs/busybox sleep 60",
                        Limits(max_silent_time=1)))
    took = time.monotonic() - start
    assert e.reason == "silent-timeout", e
    assert "printed nothing for 1s" in e.message
    assert took < 10, took


@pytest.mark.runc
def test_a_chatty_build_is_not_silent(lex: Executor, busybox: Node) -> None:
    script = "for i in 1 2 3 4 5 6; do echo $i; /inputs/busybox sleep 0.4; done"
    build = lex.build(_sh(busybox, script, Limits(max_silent_time=1.5)))
    assert build.exit_code == 0


@pytest.mark.runc
@pytest.mark.parametrize(("script", "limits", "word"), [
    ("/inputs/busybox head -c 3000000 /dev/zero > big", Limits(disk="1M"), "1 MiB"),
    ("/inputs/busybox head -c 600000 /dev/zero > /tmp/a; "
     "/inputs/busybox head -c 600000 /dev/zero > b", Limits(disk="1M"), "1 MiB"),
    ("mkdir many; cd many; i=0; while [ $i -lt 150 ]; do : > f$i; i=$((i+1)); done",
     Limits(entries=100), "more than 100 files"),
], ids=["one-big-file", "through-tmp", "many-entries"])
def test_a_build_over_its_disk_budget_is_refused(
    lex: Executor, busybox: Node, script: str, limits: Limits, word: str
) -> None:
    e = _fails(lex, _sh(busybox, script, limits, outputs=("build",)))
    assert e.reason == "output-too-large", e
    assert word in e.message, e.message


@pytest.mark.runc
def test_under_the_budget_the_build_succeeds(lex: Executor, busybox: Node) -> None:
    build = lex.build(_sh(busybox, "/inputs/busybox head -c 500000 /dev/zero > out",
                          Limits(disk="1M"), outputs=("build/out",)))
    assert build.outputs[0].size == 500000  # type: ignore[union-attr]
