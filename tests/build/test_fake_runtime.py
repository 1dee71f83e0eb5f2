"""The executor's cache, single-flight, failure and timeout logic over the fake runtime.

No container runs here (the real backends are covered by tests/runtime, tests/cache and
tests/integration); the fake plays back what a build does, so these run anywhere, fast.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pytest_ocibuild.build.caches import CacheStore
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.inputs import open_input_provider
from pytest_ocibuild.build.limits import Limits
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.build.results import ResultStore
from pytest_ocibuild.build.runtime import open_runtime
from pytest_ocibuild.build.runtime.fake import FakeRuntime, Outcome, host_path
from pytest_ocibuild.castore.local import LocalStore
from pytest_ocibuild.castore.nodes import DirectoryNode
from pytest_ocibuild.errors import BuildFailed

OUT = Outcome(files={"/build/out/hello": b"hi\n"}, output=b"building\n")


def request(tag: str = "a", **kw: object) -> BuildRequest:
    kw.setdefault("outputs", ("build/out",))
    return BuildRequest(command_args=("/bin/true", tag), scratch_paths=("build",),
                        working_dir="build", **kw)  # type: ignore[arg-type]


def executor(tmp_path: Path, runtime: FakeRuntime, **kw: object) -> Executor:
    root = tmp_path / "store"
    return Executor(LocalStore(root), inputs=open_input_provider("materialize"),
                    runtime=runtime, bundle_root=tmp_path / "bundles",
                    results=ResultStore(root), caches=CacheStore(root), **kw)  # type: ignore[arg-type]


def test_factory_names_the_fake() -> None:
    assert open_runtime("fake").name == "fake"


def test_outputs_are_ingested_and_the_log_kept(tmp_path: Path) -> None:
    fake = FakeRuntime(lambda _: OUT)
    build = executor(tmp_path, fake).build(request())
    assert len(fake.runs) == 1
    (node,) = build.outputs
    assert isinstance(node, DirectoryNode) and node.size == 2  # out/ and out/hello
    assert build.log_path and b"building" in Path(build.log_path).read_bytes()


def test_a_second_build_is_a_cache_hit(tmp_path: Path) -> None:
    fake = FakeRuntime(lambda _: OUT)
    first = executor(tmp_path, fake).build(request())
    again = executor(tmp_path, fake).build(request())  # a new executor: the store remembers
    assert len(fake.runs) == 1 and again.cached and again.outputs == first.outputs
    executor(tmp_path, fake, cache=False).build(request())
    assert len(fake.runs) == 2


def test_identical_builds_in_threads_run_once(tmp_path: Path) -> None:
    fake = FakeRuntime(lambda _: Outcome(files=OUT.files, seconds=0.5))
    ex = executor(tmp_path, fake)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(ex.build(request())))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.runs) == 1 and len(results) == 6
    assert len({r.outputs for r in results}) == 1  # type: ignore[attr-defined]


def test_a_failure_is_cached_only_when_asked(tmp_path: Path) -> None:
    fake = FakeRuntime(lambda _: Outcome(code=3, output=b"boom\n"))
    for _ in range(2):
        with pytest.raises(BuildFailed) as e:
            executor(tmp_path, fake).build(request())
        assert e.value.reason == "exit-code" and e.value.exit_code == 3
    assert len(fake.runs) == 2  # not cached by default
    for _ in range(2):
        with pytest.raises(BuildFailed, match="exit code 3"):
            executor(tmp_path, fake, cache_failures=True).build(request())
    assert len(fake.runs) == 3  # the first recorded it, the second replayed it


def test_missing_output(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed) as e:
        executor(tmp_path, FakeRuntime()).build(request())
    assert e.value.reason == "missing-output"


def test_timeout_and_silence(tmp_path: Path) -> None:
    slow = FakeRuntime(lambda _: Outcome(seconds=30))
    with pytest.raises(BuildFailed) as e:
        executor(tmp_path, slow).build(request(), timeout=0.2)
    assert e.value.reason == "timeout"
    with pytest.raises(BuildFailed) as e:
        executor(tmp_path, slow).build(request("b", limits=Limits(max_silent_time=0.2)))
    assert e.value.reason == "silent-timeout"


def test_host_path_follows_the_longest_mount(tmp_path: Path) -> None:
    config = {"root": {"path": "root"}, "mounts": [
        {"destination": "/build", "type": "none", "source": "scratch/b"},
        {"destination": "/build/sub", "type": "none", "source": "/elsewhere"},
        {"destination": "/proc", "type": "proc", "source": "proc"}]}
    assert host_path(tmp_path, config, "/build/x") == tmp_path / "scratch/b/x"
    assert host_path(tmp_path, config, "/build/sub/y") == Path("/elsewhere/y")
    assert host_path(tmp_path, config, "/etc/passwd") == tmp_path / "root/etc/passwd"
