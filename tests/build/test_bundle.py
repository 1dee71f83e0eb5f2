"""scratch_name, find_path_in_scratch and the on-disk bundle layout."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.bundle import (
    ETC_GROUP,
    ETC_HOSTS,
    ETC_PASSWD,
    BundleLayout,
    find_path_in_scratch,
    make_bundle,
    scratch_name,
)
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.request import AdditionalFile, BuildRequest, Constraints
from pytest_ocibuild.build.spec import make_spec
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.errors import BundleError

D = Digest.of(b"x")
CANON = IdMaps.canonical()  # container 1000 -> host 100000, container 100 -> host 100000


def req(**kw: Any) -> BuildRequest:
    base: dict[str, Any] = {"command_args": ("/inputs/busybox", "true")}
    base.update(kw)
    return BuildRequest(**base)


def bundle(request: BuildRequest, where: Path, **kw: Any) -> BundleLayout:
    return make_bundle(request, make_spec(request, id_maps=CANON, **kw), where / "b")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("build", "3SCCPULSYMZAQ35F76TA3A3HYQROJMTNQW7SVJDXX5BNIYJ3WHYA===="),
        ("nix/store", "SN566XP5HOO2D322W42EA3DZYPDYBMPRUF3TGFIMLXV54WM4CSNQ===="),
    ],
)
def test_scratch_name_vectors(path: str, expected: str) -> None:
    assert scratch_name(path) == expected


@pytest.mark.parametrize(
    ("path", "scratch", "expected"),
    [
        # tvix build/src/oci/bundle.rs test table
        pytest.param("nix/store/aaaa", ["nix/store"], ("nix/store", "aaaa"), id="simple"),
        pytest.param("nix/store/aaaa", ["nix/sto"], None, id="prefix_no_sep"),
        pytest.param("nix/store/aaaa", ["build"], None, id="not_found"),
        # ours
        pytest.param("nix/store/a/b", ["nix", "nix/store"], ("nix/store", "a/b"), id="longest"),
        pytest.param("nix/store/a", ["nix/store", "nix"], ("nix/store", "a"), id="unsorted"),
        pytest.param("nix/x", ["nix", "nix/store"], ("nix", "x"), id="parent-only"),
        pytest.param("build", ["build"], ("build", ""), id="equal"),
        pytest.param("build2/x", ["build"], None, id="sibling-prefix"),
        pytest.param("a", [], None, id="empty"),
    ],
)
def test_find_path_in_scratch(
    path: str, scratch: list[str], expected: tuple[str, str] | None
) -> None:
    assert find_path_in_scratch(path, scratch) == expected


def test_host_output_paths_simple() -> None:
    # tvix's test_get_host_output_paths_simple
    r = req(outputs=("nix/store/fhaj6gmwns62s6ypkcldbaj2ybvkhx3p-foo",),
            scratch_paths=("build", "nix/store"))
    layout = BundleLayout(Path("bundle-root"), r)
    assert layout.output_host_path(r.outputs[0]) == (
        Path("bundle-root") / "scratch" / scratch_name("nix/store")
        / "fhaj6gmwns62s6ypkcldbaj2ybvkhx3p-foo"
    )
    assert layout.host_path("build") == Path("bundle-root/scratch") / scratch_name("build")
    with pytest.raises(BundleError, match="not inside any scratch path"):
        layout.host_path("nix/sto/x")


def test_layout(tmp_path: Path) -> None:
    r = req(scratch_paths=("build", "nix/store"), outputs=("nix/store/out",),
            inputs_dir="nix/store", constraints=Constraints(provide_bin_sh=True))
    layout = bundle(r, tmp_path)
    b = tmp_path / "b"
    assert layout.bundle_dir == b
    assert json.loads(layout.config_path.read_text()) == make_spec(r, id_maps=CANON)
    assert layout.inputs_dir == b / "inputs" and list(layout.inputs_dir.iterdir()) == []
    etc = b / "root" / "etc"
    assert (etc / "passwd").read_text() == ETC_PASSWD
    assert (etc / "group").read_text() == ETC_GROUP
    assert (etc / "hosts").read_text() == ETC_HOSTS == "127.0.0.1 localhost\n::1 localhost\n"
    assert "nixbld:x:1000:100:" in ETC_PASSWD and "nixbld:!:100:" in ETC_GROUP
    assert sorted(os.listdir(b)) == ["config.json", "dev", "inputs", "root", "scratch"]
    assert sorted(os.listdir(b / "dev")) == [
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
        "tty", "urandom", "zero"]
    assert os.readlink(b / "dev" / "ptmx") == "/dev/pts/ptmx"  # as Nix, not runc's pts/ptmx
    assert stat.S_IMODE(os.stat(b / "root").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(b / "root" / "tmp").st_mode) == 0o1777
    store = layout.scratch_dirs["nix/store"]  # the inputs_dir: root-owned, sticky, group 100
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o1775
    # CANON's build id (100000) is given through the user namespace when the caller's
    # subordinate range holds it; otherwise the documented fallback is world-writable
    from pytest_ocibuild.build import userns

    owned = os.geteuid() == 0 or (userns.usable() and userns.mapped(100000, 100000))
    assert stat.S_IMODE(os.stat(layout.scratch_dirs["build"]).st_mode) == (
        0o700 if owned else 0o777)
    if os.geteuid() == 0:
        assert os.stat(b / "root").st_gid == os.stat(store).st_gid == 100000
        assert os.stat(store).st_uid == 0  # the caller: CANON maps container root elsewhere
    assert sorted(os.listdir(b / "scratch")) == sorted(scratch_name(p) for p in r.scratch_paths)
    assert layout.scratch_dirs == {p: b / "scratch" / scratch_name(p) for p in r.scratch_paths}
    assert layout.output_host_path("nix/store/out") == layout.scratch_dirs["nix/store"] / "out"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_scratch_owned_by_mapped_build_user(tmp_path: Path) -> None:
    r = req(scratch_paths=("build",), additional_files=(AdditionalFile("build/a/b/f", b"hi"),))
    layout = bundle(r, tmp_path)
    d = layout.scratch_dirs["build"]
    for p in (d, d / "a", d / "a" / "b", d / "a" / "b" / "f"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (100000, 100000), p
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700  # the working dir, as Nix's /build
    assert (d / "a/b/f").read_bytes() == b"hi"
    assert stat.S_IMODE(os.stat(d / "a/b/f").st_mode) == 0o644


def test_without_user_namespace_ids_are_the_hosts(tmp_path: Path) -> None:
    r = req()
    spec = make_spec(r, id_maps=CANON, rootless=False)
    layout = make_bundle(r, spec, tmp_path / "b")
    if os.geteuid() == 0:
        st = os.stat(layout.scratch_dirs["build"])
        assert (st.st_uid, st.st_gid) == (1000, 100)


def test_mount_points_in_root(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    r = req(inputs_dir="in/puts", constraints=Constraints(
        provide_bin_sh=True, available_ro_paths=("/bin/busybox", str(ro), "/usr/share")))
    root = bundle(r, tmp_path).root_dir
    for d in ("proc", "dev", "tmp", "build", "in/puts", "usr/share", str(ro)[1:]):
        assert (root / d).is_dir(), d
    assert not (root / "sys").exists()  # no /sys, as in Nix's sandbox
    assert (root / "bin" / "sh").is_file()
    assert (root / "bin" / "busybox").is_file()  # a file mount point for a file source
    dev = root.parent / "dev"  # bound at /dev: its mount points are made there
    assert not (root / "dev" / "pts").exists()
    assert (dev / "pts").is_dir() and (dev / "shm").is_dir() and (dev / "null").is_file()


def test_missing_ro_path_refused(tmp_path: Path) -> None:
    r = req(constraints=Constraints(available_ro_paths=(str(tmp_path / "nope"),)))
    with pytest.raises(BundleError, match="does not exist"):
        bundle(r, tmp_path)


def test_per_name_inputs_mount_points_in_scratch(tmp_path: Path) -> None:
    r = req(
        inputs={"a-file": FileNode(D, 1), "b-dir": DirectoryNode(D, 0),
                "c-link": SymlinkNode(b"a-file")},
        scratch_paths=("build", "nix/store"), inputs_dir="nix/store",
    )
    layout = bundle(r, tmp_path)
    store = layout.scratch_dirs["nix/store"]
    assert (store / "a-file").is_file() and not (store / "a-file").is_symlink()
    assert (store / "b-dir").is_dir()
    assert os.readlink(store / "c-link") == "a-file"
    assert not (layout.root_dir / "nix" / "store" / "a-file").exists()
    assert (layout.root_dir / "nix" / "store").is_dir()


def test_nested_scratch_mount_point_in_parent_scratch(tmp_path: Path) -> None:
    r = req(scratch_paths=("build", "nix", "nix/store"))
    layout = bundle(r, tmp_path)
    assert (layout.scratch_dirs["nix"] / "store").is_dir()
    assert not (layout.root_dir / "nix" / "store").exists()


def test_additional_file_outside_scratch_refused(tmp_path: Path) -> None:
    r = req(additional_files=(AdditionalFile("etc/foo", b"x"),))
    with pytest.raises(BundleError, match="not inside a scratch path"):
        bundle(r, tmp_path)


def test_additional_file_at_scratch_path_refused(tmp_path: Path) -> None:
    r = req(additional_files=(AdditionalFile("build", b"x"),))
    with pytest.raises(BundleError, match="not inside a scratch path"):
        bundle(r, tmp_path)


def test_existing_bundle_refused(tmp_path: Path) -> None:
    bundle(req(), tmp_path)
    with pytest.raises(BundleError, match="already holds a bundle"):
        bundle(req(), tmp_path)


def test_unmapped_build_user_refused(tmp_path: Path) -> None:
    r = req()
    spec = make_spec(r, id_maps=IdMaps(((0, 5, 1),), ((0, 5, 1),)))
    with pytest.raises(BundleError, match="does not map container id 1000"):
        make_bundle(r, spec, tmp_path / "b")
    assert not (tmp_path / "b" / "config.json").exists()


def test_shared_dev_is_made_once_and_linked(tmp_path: Path) -> None:
    """With ``shared_dir``, ``dev/`` links to one shared copy holding what a private one
    holds; a request with other mounts below /dev gets a copy of its own."""
    r = req()
    spec = make_spec(r, id_maps=CANON)
    private = make_bundle(r, spec, tmp_path / "private").bundle_dir / "dev"
    shared = tmp_path / "shared"
    a = make_bundle(r, spec, tmp_path / "a", shared_dir=shared).bundle_dir / "dev"
    b = make_bundle(r, spec, tmp_path / "b", shared_dir=shared).bundle_dir / "dev"
    assert a.is_symlink() and os.readlink(a) == os.readlink(b)
    target = Path(os.readlink(a))
    assert target.is_absolute() and target.parent == shared.absolute()
    assert os.listdir(shared) == [target.name]  # made once, nothing half-made left
    for name in sorted(os.listdir(private)):
        p, s = os.lstat(private / name), os.lstat(target / name)
        assert (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode)) == (
            stat.S_IFMT(p.st_mode), stat.S_IMODE(p.st_mode)), name
        if stat.S_ISLNK(p.st_mode):
            assert os.readlink(target / name) == os.readlink(private / name)
    assert sorted(os.listdir(target)) == sorted(os.listdir(private))
    # the same contents, the same copy: /dev/full is a device bound already
    same = req(constraints=Constraints(available_ro_paths=("/dev/full",)))
    assert os.readlink(make_bundle(same, make_spec(same, id_maps=CANON), tmp_path / "c",
                                   shared_dir=shared).bundle_dir / "dev") == os.readlink(a)
    console = req(constraints=Constraints(available_ro_paths=("/dev/console",)))
    other = make_bundle(console, make_spec(console, id_maps=CANON), tmp_path / "d",
                        shared_dir=shared).bundle_dir / "dev"
    assert os.readlink(other) != os.readlink(a) and len(os.listdir(shared)) == 2
    assert (other / "console").is_file() and not (target / "console").exists()
