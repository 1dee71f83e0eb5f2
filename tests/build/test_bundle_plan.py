"""plan_bundle: owners and mount points derived once, the same bundle with or without a plan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_ocibuild.build.bundle import (
    Owners,
    build_owner,
    make_bundle,
    plan_bundle,
    root_skeleton,
)
from pytest_ocibuild.build.ids import IdMaps
from pytest_ocibuild.build.request import AdditionalFile, BuildRequest, Constraints
from pytest_ocibuild.build.spec import make_spec
from pytest_ocibuild.errors import BundleError

CANON = IdMaps.canonical()


def request() -> BuildRequest:
    return BuildRequest(
        command_args=("/inputs/busybox", "true"), inputs_dir="nix/store",
        scratch_paths=("build", "nix/store"), working_dir="build/src",
        additional_files=(AdditionalFile("build/a/b.txt", b"x"),),
        constraints=Constraints(provide_bin_sh=True, available_ro_paths=("/usr/share",)))


def tree(top: Path) -> list[tuple[str, int, int, int, str]]:
    """(path, mode, uid, gid, link target) of everything below ``top``."""
    out = []
    for dirpath, dirs, files in os.walk(top):
        for name in sorted((*dirs, *files)):
            p = Path(dirpath) / name
            st = os.lstat(p)
            link = os.readlink(p) if p.is_symlink() else ""
            out.append((str(p.relative_to(top)), st.st_mode, st.st_uid, st.st_gid, link))
    return sorted(out)


def test_owners_are_read_once_and_match_build_owner() -> None:
    spec = make_spec(request(), id_maps=CANON)
    owners = Owners.of(spec)
    assert owners.build == build_owner(spec) == (100000, 100000)
    assert (owners.root_uid, owners.root_gid) == (1000, 100)
    plan = plan_bundle(request(), spec)
    assert plan.owners == owners
    assert plan.skeleton == root_skeleton(request(), spec)
    assert {on for on, *_ in plan.points} >= {"root", "dev"}


def test_bundle_with_plan_is_the_bundle_without(tmp_path: Path) -> None:
    r = request()
    spec = make_spec(r, id_maps=CANON)
    plain = make_bundle(r, spec, tmp_path / "plain")
    planned = make_bundle(r, spec, tmp_path / "planned", plan=plan_bundle(r, spec))
    assert tree(planned.bundle_dir) == tree(plain.bundle_dir)
    assert (planned.bundle_dir / "config.json").read_text() == \
        (plain.bundle_dir / "config.json").read_text()
    assert (planned.host_path("build/src")).is_dir()  # working dir made below its scratch


def test_given_owners_are_used(tmp_path: Path) -> None:
    r = request()
    spec = make_spec(r, id_maps=CANON)
    mine = Owners(build=(os.geteuid(), os.getegid()), root_uid=os.geteuid(),
                  root_gid=os.getegid())
    layout = make_bundle(r, spec, tmp_path / "b", plan=plan_bundle(r, spec, owners=mine))
    st = os.lstat(layout.scratch_dir("build"))
    assert (st.st_uid, st.st_gid) == mine.build


def test_a_plan_for_another_spec_is_refused(tmp_path: Path) -> None:
    r = request()
    plan = plan_bundle(r, make_spec(r, id_maps=CANON))
    with pytest.raises(BundleError, match="another request or spec"):
        make_bundle(r, make_spec(r, id_maps=CANON), tmp_path / "b", plan=plan)
