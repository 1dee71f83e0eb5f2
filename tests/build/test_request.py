"""BuildRequest validation, file round trips and the stable request digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ocibuild.build.request import BuildRequest, Constraints, EnvVar
from pytest_ocibuild.build.request_io import dump_request, load_request, request_from_dict
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import FileNode, SymlinkNode
from pytest_ocibuild.errors import InvalidRequest

BUSYBOX = FileNode(Digest.of(b"busybox"), 7, executable=True)


def make(**kw: object) -> BuildRequest:
    base: dict[str, object] = {"command_args": ("/inputs/busybox", "true")}
    base.update(kw)
    return BuildRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"command_args": ()}, "command_args"),
        ({"working_dir": "/build"}, "absolute"),
        ({"working_dir": "a/../b"}, "not a clean path"),
        ({"working_dir": "a//b"}, "not a clean path"),
        ({"inputs_dir": "./in"}, "not a clean path"),
        ({"scratch_paths": ("b", "a")}, "not sorted"),
        ({"scratch_paths": ("a", "a")}, "duplicate"),
        ({"outputs": ("nix/out",)}, "not inside any scratch path"),
        ({"scratch_paths": ("nix/store",), "outputs": ("nix/sto",)}, "not inside"),
        ({"outputs": ("build/b", "build/a")}, "not sorted"),
        ({"environment_vars": (EnvVar("B", b""), EnvVar("A", b""))}, "not sorted"),
        ({"inputs": {"a/b": BUSYBOX}}, "inputs"),
        ({"inputs": {"..": BUSYBOX}}, "inputs"),
        ({"refscan_needles": ("",)}, "empty needle"),
    ],
)
def test_invalid_requests_name_the_field(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        make(**kw)


def test_constraints_rules() -> None:
    with pytest.raises(InvalidRequest, match="absolute"):
        Constraints(available_ro_paths=("dev/kvm",))
    with pytest.raises(InvalidRequest, match="not sorted"):
        Constraints(available_ro_paths=("/z", "/a"))
    with pytest.raises(InvalidRequest, match="system"):
        Constraints(system="")


def test_env_key_rules() -> None:
    with pytest.raises(InvalidRequest, match="invalid key"):
        EnvVar("A=B", b"x")
    with pytest.raises(InvalidRequest, match="NUL"):
        EnvVar("A", b"x\0y")


def test_output_equal_to_nested_scratch_path_is_allowed() -> None:
    r = make(scratch_paths=("build", "nix/store"), outputs=("nix/store/abc-out",))
    assert r.outputs == ("nix/store/abc-out",)


def test_inputs_are_sorted_by_name() -> None:
    r = make(inputs={"b": BUSYBOX, "a": SymlinkNode(b"b")})
    assert list(r.inputs) == ["a", "b"]


def test_digest_is_stable_and_sensitive() -> None:
    a = make(environment_vars=(EnvVar("A", b"1"),))
    b = make(environment_vars=(EnvVar("A", b"1"),))
    c = make(environment_vars=(EnvVar("A", b"2"),))
    assert a.digest == b.digest
    assert a.digest != c.digest
    # pinned: the cache key format must not drift silently
    assert len(a.digest.hex) == 64


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    r = make(
        inputs={"busybox": BUSYBOX, "link": SymlinkNode(b"busybox")},
        scratch_paths=("build", "out"),
        outputs=("out/a", "out/b"),
        environment_vars=(EnvVar("ODD", "tab\t \"q\" ü\n".encode()), EnvVar("RAW", b"\xff\xfe")),
        constraints=Constraints(network_access=True, available_ro_paths=("/dev/kvm",)),
        refscan_needles=("abc",),
    )
    path = tmp_path / f"req{suffix}"
    dump_request(r, path)
    assert load_request(path) == r
    assert load_request(path).digest == r.digest


def test_unknown_fields_and_types(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="unknown field"):
        request_from_dict({"command_args": ["x"], "comand": 1})
    with pytest.raises(InvalidRequest, match="constraints: unknown"):
        request_from_dict({"command_args": ["x"], "constraints": {"network": True}})
    with pytest.raises(InvalidRequest, match="list of strings"):
        request_from_dict({"command_args": "echo hi"})
    with pytest.raises(InvalidRequest, match="unknown node type"):
        request_from_dict({"command_args": ["x"], "inputs": {"a": {"type": "fifo"}}})


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("command_args: [a, b\noutputs: [\n")
    with pytest.raises(InvalidRequest) as exc:
        load_request(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    assert msg.startswith(f"{path}:")


def test_host_path_inputs_are_ingested_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("hi")
    path = tmp_path / "req.yaml"
    path.write_text("command_args: [x]\ninputs:\n  data: {path: data.txt}\n")
    seen: list[Path] = []

    def ingest(p: Path) -> FileNode:
        seen.append(p)
        return FileNode(Digest.of(p.read_bytes()), p.stat().st_size)

    r = load_request(path, ingest=ingest)
    assert seen == [tmp_path / "data.txt"]
    assert r.inputs["data"] == FileNode(Digest.of(b"hi"), 2)
    path.write_text("command_args: [x]\ninputs:\n  data: {path: nope}\n")
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_request(path, ingest=ingest)
