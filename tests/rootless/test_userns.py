"""Removing trees through the caller's user namespace (build/userns.py).

The walk runs in the namespace helper as a normal user with subordinate ids (``.ci/rootless``
runs this directory as such a user); as root the same helper program runs without a
namespace, so its walk (no symlink followed, no mount entered, no recursion limit) is tested
either way.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ocibuild.build import userns
from pytest_ocibuild.build.atomic import remove_tree

ROOT = os.geteuid() == 0
needs_user = pytest.mark.skipif(
    ROOT or not userns.usable(),
    reason="needs a normal user with /etc/subuid and /etc/subgid ranges (.ci/rootless)")


def _plain(op: str, path: Path) -> None:
    """The helper program as root, outside any namespace, answering one request."""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", userns._HELPER],
                          input=f"{op} 0 0 {os.fsencode(path).hex()}\n", capture_output=True,
                          text=True, check=True)
    code, _, message = done.stdout.strip().partition(" ")
    if code != "0":
        raise OSError(int(code), message, str(path))


@pytest.fixture
def walk() -> Callable[[str, Path], None]:
    """``walk(op, path)``: the helper's walk, in the namespace unless we are root."""
    return _plain if ROOT else userns._request


def _deep_tree(top: Path, depth: int) -> list[Path]:
    """A chain of ``depth`` directories below ``top``, a file in the last; the directories."""
    dirs = [top]
    for _ in range(depth):
        dirs.append(dirs[-1] / "d")
    for d in dirs:
        d.mkdir()
    (dirs[-1] / "leaf").write_text("x")
    return dirs


def test_walk_removes_a_deep_read_only_tree_without_following_symlinks(
        tmp_path: Path, walk: Callable[[str, Path], None]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    top = tmp_path / "top"
    dirs = _deep_tree(top, 1100)  # deeper than Python's recursion limit and `ulimit -n`
    os.symlink(outside, dirs[-1] / "escape")
    os.symlink(outside / "keep", top / "file-link")
    for d in reversed(dirs):
        os.chmod(d, 0o555)
    walk("rm", top)
    assert not os.path.lexists(top)
    assert (outside / "keep").read_text() == "kept"


def test_walk_refuses_a_mount_point_below(tmp_path: Path,
                                          walk: Callable[[str, Path], None]) -> None:
    if not ROOT:
        pytest.skip("mounting a tmpfs below the tree needs root")
    top = tmp_path / "top"
    (top / "m").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(top / "m")], check=True)
    try:
        (top / "m" / "precious").write_text("x")
        with pytest.raises(OSError, match="mount point") as e:
            walk("rm", top)
        assert e.value.errno == 16
        assert (top / "m" / "precious").read_text() == "x"
    finally:
        subprocess.run(["umount", str(top / "m")], check=True)


def test_walk_gives_a_tree_back(tmp_path: Path, walk: Callable[[str, Path], None]) -> None:
    """Owners become the caller's; unreadable files and closed directories are opened to
    their owner, executable bits stay as they were."""
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "f").write_text("x")
    (top / "a" / "x").write_text("#!/bin/sh\n")
    os.chmod(top / "a" / "f", 0o000)
    os.chmod(top / "a" / "x", 0o111)
    os.symlink("f", top / "a" / "l")
    os.chmod(top / "a" / "b", 0o000)
    if ROOT:
        for p in (top / "a", top / "a" / "b", top / "a" / "f"):
            os.chown(p, 12345, 23456)
        os.lchown(top / "a" / "l", 12345, 23456)
    else:  # make them the first subordinate id's, through the namespace
        subprocess.run(["unshare", "--map-root-user", *_map_args(), "chown", "-hR", "1:1",
                        str(top / "a")], check=True)
        assert os.stat(top / "a" / "f").st_uid != os.geteuid()
    walk("own", top)
    for p in (top, top / "a", top / "a" / "b", top / "a" / "f", top / "a" / "l"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), p
    assert (top / "a" / "f").read_text() == "x"
    assert stat.S_IMODE(os.stat(top / "a" / "f").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(top / "a" / "x").st_mode) == 0o511
    assert stat.S_IMODE(os.stat(top / "a" / "b").st_mode) & 0o700 == 0o700
    remove_tree(top)  # now plainly
    assert not top.exists()


def _map_args() -> list[str]:
    found = userns.maps()
    assert found is not None
    (us, un), (gs, gn) = found
    return [f"--map-users={us},1,{un}", f"--map-groups={gs},1,{gn}"]


def _foreign_tree(top: Path, files: int) -> None:
    """A tree of ``files`` files in read-only directories, owned by a subordinate id."""
    for i in range(files):
        d = top / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_text("x")
    subprocess.run(["unshare", "--map-root-user", *_map_args(), "sh", "-c",
                    'chown -R 1000:100 "$1" && chmod -R a-w "$1"', "-", str(top)], check=True)


@needs_user
def test_remove_tree_falls_back_to_the_namespace(tmp_path: Path) -> None:
    """What a plain rmtree cannot remove (a subordinate id's read-only tree) goes; the cost
    per removal is printed (the first one starts the helper)."""
    trees = [tmp_path / f"t{i}" for i in range(6)]
    for t in trees:
        _foreign_tree(t, 20)
    assert os.stat(trees[0] / "d0" / "f0").st_uid != os.geteuid()
    with pytest.raises(PermissionError):
        shutil.rmtree(trees[0] / "d0")
    took = []
    for t in trees:
        start = time.perf_counter()
        remove_tree(t)
        took.append(time.perf_counter() - start)
        assert not os.path.lexists(t)
    print(f"userns removal: first {took[0] * 1000:.1f} ms (starts the helper), then "
          f"{sum(took[1:]) / len(took[1:]) * 1000:.2f} ms per 20-file tree")
    assert sorted(os.listdir(tmp_path)) == []


@needs_user
def test_a_forked_child_gets_its_own_helper(tmp_path: Path) -> None:
    _foreign_tree(tmp_path / "parent", 3)
    remove_tree(tmp_path / "parent")
    _foreign_tree(tmp_path / "child", 3)
    pid = os.fork()
    if pid == 0:
        try:
            remove_tree(tmp_path / "child")
            os._exit(0 if not os.path.lexists(tmp_path / "child") else 1)
        except BaseException:
            os._exit(2)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert not os.path.lexists(tmp_path / "child")


@needs_user
def test_a_tree_of_another_user_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """Root's files are not mapped in the caller's namespace: the error names the path."""
    victim = Path("/etc/hostname")
    if not victim.exists():
        pytest.skip("needs /etc/hostname")
    with pytest.raises(OSError) as e:
        userns.remove_tree(victim)
    assert e.value.errno in (1, 13) and "/etc/hostname" in str(e.value)
    assert victim.exists()


@needs_user
def test_chown_tree_gives_a_tree_to_the_build_user(tmp_path: Path) -> None:
    """A caller's tree handed to the first subordinate id (a rootless build's uid), back to
    the caller, and any other id refused."""
    found = userns.maps()
    assert found is not None
    build = (found[0][0], found[1][0])
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "d" / "f").write_text("x")
    userns.chown_tree(tmp_path / "t", *build)
    for p in (tmp_path / "t", tmp_path / "t" / "d", tmp_path / "t" / "d" / "f"):
        assert (os.lstat(p).st_uid, os.lstat(p).st_gid) == build, p
    userns.chown_tree(tmp_path / "t", os.geteuid(), os.getegid())
    assert os.lstat(tmp_path / "t" / "d" / "f").st_uid == os.geteuid()
    with pytest.raises(ValueError):
        userns.chown_tree(tmp_path / "t", 0, 0)
