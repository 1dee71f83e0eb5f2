"""Persistent caches (OBuilder semantics): private clones, generation-checked commit, Busy."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ocibuild.build.caches import CacheBusy, CacheStore
from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.request import CacheMount
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import read_blob
from pytest_ocibuild.errors import BuildFailed, InvalidRequest
from tests.cache.conftest import sh


def test_clone_is_private_until_commit(tmp_path: Path) -> None:
    caches = CacheStore(tmp_path)
    with caches.use("c") as clone:
        assert clone.generation == 0
        (clone.path / "f").write_text("one")
        assert not (caches.snapshot("c") / "f").exists()  # type: ignore[operator]
        assert clone.commit()
    snap = caches.snapshot("c")
    assert caches.generation("c") == 1 and snap is not None and (snap / "f").read_text() == "one"
    with caches.use("c") as clone:
        (clone.path / "f").write_text("changed in place")  # a reflink/copy, not a hardlink
        assert (snap / "f").read_text() == "one"
    assert caches.generation("c") == 1  # released without commit: discarded
    assert (caches.snapshot("c") / "f").read_text() == "one"  # type: ignore[operator]
    assert list((tmp_path / "caches" / "c" / "clones").iterdir()) == []


def test_commit_only_if_generation_unchanged(tmp_path: Path) -> None:
    caches = CacheStore(tmp_path)
    with caches.use("c") as a, caches.use("c") as b:
        (a.path / "who").write_text("a")
        (b.path / "who").write_text("b")
        assert b.commit()
        assert not a.commit()  # b moved the generation on since a cloned
    assert (caches.snapshot("c") / "who").read_text() == "b"  # type: ignore[operator]
    assert caches.generation("c") == 1
    assert sorted(p.name for p in (tmp_path / "caches" / "c").iterdir()) == [
        "clones", "current", "snap-1"]


def test_delete_refused_while_in_use(tmp_path: Path) -> None:
    caches = CacheStore(tmp_path)
    with caches.use("c") as clone:
        assert caches.in_use("c")
        with pytest.raises(CacheBusy) as exc:
            caches.delete("c")
        assert exc.value.reason == "busy"
        clone.commit()
    assert not caches.in_use("c")
    assert caches.delete("c") and caches.generation("c") is None
    assert not caches.delete("c")


def test_delete_waits_for_no_one_else_in_another_thread(tmp_path: Path) -> None:
    caches = CacheStore(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def user() -> None:
        with caches.use("c"):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=user)
    t.start()
    entered.wait(10)
    try:
        with pytest.raises(CacheBusy):
            caches.delete("c")
    finally:
        release.set()
        t.join()
    assert caches.delete("c")


def test_ls_and_names(tmp_path: Path) -> None:
    caches = CacheStore(tmp_path)
    for name in ("b", "a"):
        with caches.use(name) as clone:
            (clone.path / "data").write_bytes(b"x" * 100)
            clone.commit()
    infos = caches.ls()
    assert [(i.name, i.generation, i.size, i.in_use) for i in infos] == [
        ("a", 1, 100, False), ("b", 1, 100, False)]
    with pytest.raises(InvalidRequest):
        caches.generation("../escape")


pytestmark_runc = pytest.mark.runc  # the tests below run real builds


def _counter(busybox: Node, script: str = "") -> object:
    return sh(busybox, (
        "n=$(cat /var/cache/app/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /var/cache/app/n; "
        "echo $n > out; " + script),
        caches=(CacheMount("app", "var/cache/app"),))


@pytestmark_runc
@pytest.mark.parametrize("provider", ["materialize", "fuse"])
def test_builds_see_and_update_the_cache(executor_factory: Callable[..., Executor],
                                         busybox: Node, provider: str) -> None:
    ex = executor_factory(provider=provider)
    seen = []
    for i in range(3):
        b = ex.build(_counter(busybox, f": {i}"))  # distinct requests, so each one runs
        seen.append(read_blob(ex.store, b.outputs[0].digest))  # type: ignore[union-attr]
    assert seen == [b"1\n", b"2\n", b"3\n"]
    assert ex.caches is not None and ex.caches.generation("app") == 3


@pytestmark_runc
def test_failed_build_discards_its_clone(executor: Executor, busybox: Node) -> None:
    executor.build(_counter(busybox))
    with pytest.raises(BuildFailed):
        executor.build(_counter(busybox, "exit 1"))
    b = executor.build(_counter(busybox, "true"))
    assert read_blob(executor.store, b.outputs[0].digest) == b"2\n"  # type: ignore[union-attr]
    assert executor.caches is not None and executor.caches.generation("app") == 2


@pytestmark_runc
def test_cache_in_use_by_a_build_cannot_be_deleted(executor: Executor, busybox: Node) -> None:
    assert executor.caches is not None
    caches = executor.caches
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(errors, executor.build,
                                               _counter(busybox, "sleep 2")))
    t.start()
    try:
        for _ in range(100):
            if caches.in_use("app"):
                break
            threading.Event().wait(0.05)
        with pytest.raises(CacheBusy):
            caches.delete("app")
    finally:
        t.join()
    assert not errors
    assert caches.delete("app")


def _catch(errors: list[BaseException], fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except BaseException as e:
        errors.append(e)


def test_cache_paths_are_validated(busybox: Node) -> None:
    with pytest.raises(InvalidRequest, match="scratch path"):
        sh(busybox, "true", caches=(CacheMount("c", "build"),))
    with pytest.raises(InvalidRequest, match="output"):
        sh(busybox, "true", caches=(CacheMount("c", "build/out"),))
    with pytest.raises(InvalidRequest, match="inputs_dir"):
        sh(busybox, "true", caches=(CacheMount("c", "inputs/x"),))
    with pytest.raises(InvalidRequest, match="inside cache"):
        sh(busybox, "true", caches=(CacheMount("a", "var/c"), CacheMount("b", "var/c/d")))
    with pytest.raises(InvalidRequest, match="cache name"):
        CacheMount("../x", "var/c")
    assert sh(busybox, "true", caches=(CacheMount("c", "build/cache"),)).caches
