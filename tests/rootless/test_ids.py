"""A normal user's id maps (build/ids.py): one subordinate id per build slot."""

from __future__ import annotations

from pathlib import Path

from pytest_ocibuild.build.ids import IdMaps


def test_each_slot_of_a_user_builds_as_its_own_subordinate_id(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("other:1:5\nalice:200000:3\n")
    (tmp_path / "subgid").write_text("alice:300000:3\n")

    def maps(slot: int) -> IdMaps:
        return IdMaps.detect(uid=1234, gid=1234, user="alice", slot=slot,
                             subuid_path=tmp_path / "subuid", subgid_path=tmp_path / "subgid")

    assert maps(0).uid_mappings == ((0, 1234, 1), (1000, 200000, 1))
    assert maps(0).gid_mappings == ((0, 1234, 1), (100, 300000, 1))
    assert [maps(s).host_uid(1000) for s in range(4)] == [200000, 200001, 200002, 200000]
    assert [maps(s).host_gid(100) for s in range(4)] == [300000, 300001, 300002, 300000]
    assert {maps(s).host_uid(0) for s in range(4)} == {1234}  # container root: the caller
