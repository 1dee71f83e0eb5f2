"""Build events (build.events): their JSON schema, their order, failure reasons, live logs.

The order and failure mapping run over the fake runtime; the live-log tests run real runc
builds through the reaper's stream forwarding.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import jsonschema
import pytest

from pytest_ocibuild.build import events
from pytest_ocibuild.build.caches import CacheStore
from pytest_ocibuild.build.events import Failed, Finished, Log, Phase, Queued, Started
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.results import ResultStore
from pytest_ocibuild.build.runtime import Runtime
from pytest_ocibuild.build.runtime.fake import FakeRuntime, Outcome
from pytest_ocibuild.build.runtime.runc import RuncRuntime
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.errors import BuildFailed

OUT = Outcome(files={"/build/out/hello": b"hi\n"}, output=b"building\n")
BUSYBOX = Path("/bin/busybox")


def request(tag: str = "a", **kw: object) -> BuildRequest:
    kw.setdefault("outputs", ("build/out",))
    return BuildRequest(command_args=("/bin/true", tag), scratch_paths=("build",),
                        working_dir="build", **kw)  # type: ignore[arg-type]


def executor(tmp_path: Path, runtime: Runtime, **kw: object) -> Executor:
    root = tmp_path / "store"
    return Executor(LocalStore(root), inputs=open_input_provider("materialize"),
                    runtime=runtime, bundle_root=tmp_path / "bundles",
                    results=ResultStore(root), caches=CacheStore(root),
                    **kw)  # type: ignore[arg-type]


def check(seen: list[events.Event]) -> None:
    """Every event's JSON object passes the schema."""
    for event in seen:
        jsonschema.validate(events.to_json(event), events.SCHEMA)


def test_the_schema_is_valid_and_checks_each_kind() -> None:
    jsonschema.Draft202012Validator.check_schema(events.SCHEMA)
    samples: list[events.Event] = [
        Queued("k"), Started("/b", "runc", ("busybox",)), Log("stderr", b"\xffoops\n"),
        Phase("refscan"), Finished(("ab" * 32,), 1.5, cached=True),
        Failed("exit-code", "builder failed", exit_code=137, signal=9)]
    check(samples)
    log = events.to_json(samples[2])
    assert log["text"] == "\ufffdoops\n" and log["data"] == "/29vcHMK"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**events.to_json(Phase("run")), "name": "dance"}, events.SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**events.to_json(Failed("x", "y")), "reason": "x"}, events.SCHEMA)


def test_a_build_reports_each_step_then_a_hit_reports_cached(tmp_path: Path) -> None:
    seen: list[events.Event] = []
    ex = executor(tmp_path, FakeRuntime(lambda _: OUT))
    build = ex.build(request(), listener=seen.append)
    check(seen)
    assert [type(e).__name__ for e in seen] == [
        "Queued", "Started", "Phase", "Phase", "Log", "Phase", "Finished"]
    assert [e.name for e in seen if isinstance(e, Phase)] == ["inputs", "run", "ingest"]
    assert seen[4] == Log("stdout", b"building\n", seen[4].time)  # type: ignore[union-attr]
    assert isinstance(seen[1], Started) and seen[1].runtime == "fake"
    done = seen[-1]
    assert isinstance(done, Finished) and not done.cached
    assert done.outputs == (build.outputs[0].digest.hex,)  # type: ignore[union-attr]
    assert [e.time for e in seen] == sorted(e.time for e in seen)
    again: list[events.Event] = []
    ex.build(request(), listener=again.append)
    assert [type(e) for e in again] == [Queued, Finished]
    assert isinstance(again[1], Finished) and again[1].cached
    assert again[1].outputs == done.outputs


def test_refscan_is_a_phase_when_the_request_has_needles(tmp_path: Path) -> None:
    seen: list[events.Event] = []
    executor(tmp_path, FakeRuntime(lambda _: OUT)).build(
        request(refscan_needles=("hi",)), listener=seen.append)
    assert [e.name for e in seen if isinstance(e, Phase)] == [
        "inputs", "run", "ingest", "refscan"]


@pytest.mark.parametrize(("outcome", "kw", "reason", "code", "sig"), [
    (Outcome(code=3, output=b"no\n"), {}, "exit-code", 3, None),
    (Outcome(code=137), {}, "exit-code", 137, 9),
    (Outcome(seconds=5), {"timeout": 0.2}, "timeout", None, None),
    (Outcome(output=b"nothing made\n"), {}, "missing-output", None, None),
])
def test_each_failure_maps_to_its_reason(
    tmp_path: Path, outcome: Outcome, kw: dict[str, float], reason: str, code: int | None,
    sig: int | None,
) -> None:
    seen: list[events.Event] = []
    with pytest.raises(BuildFailed) as info:
        executor(tmp_path, FakeRuntime(lambda _: outcome)).build(
            request(), listener=seen.append, **kw)  # type: ignore[arg-type]
    check(seen)
    failed = seen[-1]
    assert isinstance(failed, Failed), seen
    assert (failed.reason, failed.exit_code, failed.signal) == (reason, code, sig)
    assert failed.reason == info.value.reason and failed.message == info.value.message
    assert not any(isinstance(e, Finished) for e in seen)


def test_silent_timeout_maps_to_its_reason(tmp_path: Path) -> None:
    from pytest_ocibuild.build.limits import Limits

    seen: list[events.Event] = []
    ex = executor(tmp_path, FakeRuntime(lambda _: Outcome(seconds=5)),
                  limits=Limits(max_silent_time=0.2))
    with pytest.raises(BuildFailed):
        ex.build(request(), listener=seen.append)
    assert isinstance(seen[-1], Failed) and seen[-1].reason == "silent-timeout"


def test_a_cached_failure_is_failed_again(tmp_path: Path) -> None:
    fake = FakeRuntime(lambda _: Outcome(code=2))
    ex = executor(tmp_path, fake, cache_failures=True)
    with pytest.raises(BuildFailed):
        ex.build(request())
    seen: list[events.Event] = []
    with pytest.raises(BuildFailed):
        ex.build(request(), listener=seen.append)
    assert len(fake.runs) == 1
    assert [type(e) for e in seen] == [Queued, Failed]
    assert isinstance(seen[1], Failed) and seen[1].exit_code == 2


@pytest.fixture
def runc_executor(tmp_path: Path) -> Executor:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc); CI installs it")
    runtime = RuncRuntime("runc", state_dir=tmp_path / "runc-state")
    assert runtime.unavailable_reason() is None
    return executor(tmp_path, runtime)


def sh(ex: Executor, script: str) -> BuildRequest:
    busybox = ingest_path(ex.store, BUSYBOX)
    return BuildRequest(inputs={"busybox": busybox}, scratch_paths=("build",),
                        working_dir="build", outputs=("build/out",),
                        command_args=("/inputs/busybox", "sh", "-c", script))


@pytest.mark.runc
def test_the_first_log_arrives_while_the_build_runs(runc_executor: Executor) -> None:
    seen: list[events.Event] = []
    runc_executor.build(sh(runc_executor, "echo first; sleep 2; echo second >&2; : > out"),
                        listener=seen.append)
    check(seen)
    queued, started = seen[0], seen[1]
    logs = [e for e in seen if isinstance(e, Log)]
    done = seen[-1]
    assert isinstance(queued, Queued) and isinstance(started, Started)
    assert isinstance(done, Finished)
    assert [(e.stream, e.data) for e in logs] == [("stdout", b"first\n"),
                                                   ("stderr", b"second\n")]
    assert logs[0].time - queued.time < 1.0, "the first line came only when the build ended"
    assert logs[1].time - logs[0].time > 1.5  # the build slept between them
    assert logs[0].time < done.time


@pytest.mark.runc
def test_big_output_streams_whole_in_order(runc_executor: Executor) -> None:
    seen: list[events.Event] = []
    build = runc_executor.build(sh(runc_executor, (
        "i=0; while [ $i -lt 3000 ]; do echo line $i of a long and chatty build log; "
        "i=$((i+1)); done; : > out")), listener=seen.append)
    data = b"".join(e.data for e in seen if isinstance(e, Log))
    assert len(data) > 100_000
    assert data == Path(build.log_path or "").read_bytes()
    assert max(len(e.data) for e in seen if isinstance(e, Log)) <= 65535


@pytest.mark.runc
def test_without_a_listener_nothing_is_streamed(runc_executor: Executor) -> None:
    build = runc_executor.build(sh(runc_executor, "echo quiet; : > out"))
    assert Path(build.log_path or "").read_bytes() == b"quiet\n"


def joined_build(ex: Executor, req: BuildRequest, first: bytes) -> tuple[
        list[events.Event], list[events.Event], float]:
    """Build ``req`` in a thread; once it has printed ``first``, build it again here (a
    joiner of the single flight). The events of both and when the joiner began."""
    import threading

    runner: list[events.Event] = []
    printed = threading.Event()

    def listen(event: events.Event) -> None:
        runner.append(event)
        if isinstance(event, Log) and first in event.data:
            printed.set()

    thread = threading.Thread(target=lambda: ex.build(req, listener=listen))
    thread.start()
    assert printed.wait(30), runner
    joined_at = time.monotonic()
    joiner: list[events.Event] = []
    ex.build(req, listener=joiner.append)
    thread.join(30)
    return runner, joiner, joined_at


def test_a_joiner_gets_the_running_builds_log_from_its_start(tmp_path: Path) -> None:
    fake = FakeRuntime(lambda _: Outcome(files=OUT.files, output=b"building\n", seconds=1))
    ex = executor(tmp_path, fake)
    runner, joiner, _ = joined_build(ex, request(), b"building")
    assert len(fake.runs) == 1
    assert [type(e) for e in joiner] == [Queued, Log, Finished]
    assert joiner[1] == runner[4]  # the very event the runner had
    assert isinstance(joiner[-1], Finished) and joiner[-1].cached


@pytest.mark.runc
def test_a_joiner_gets_the_rest_live(runc_executor: Executor) -> None:
    req = sh(runc_executor, "echo first; sleep 1; echo second; : > out")
    runner, joiner, joined_at = joined_build(runc_executor, req, b"first")
    logs = [e for e in joiner if isinstance(e, Log)]
    assert [e.data for e in logs] == [b"first\n", b"second\n"]
    assert logs[0].time < joined_at < logs[1].time  # replayed, then live
    assert isinstance(joiner[-1], Finished) and joiner[-1].cached
    assert [e for e in runner if isinstance(e, Log)] == logs
