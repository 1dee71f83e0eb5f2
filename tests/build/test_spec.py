"""make_spec (pure config.json), id maps, and validation against the OCI JSON schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ocibuild.build.bundle import scratch_name
from pytest_ocibuild.build.ids import BLOCK, ID_START, IdMaps
from pytest_ocibuild.build.request import AdditionalFile, BuildRequest, Constraints, EnvVar
from pytest_ocibuild.build.schema import SchemaUnavailable, validate_spec
from pytest_ocibuild.build.spec import (
    NETWORK_FILES,
    host_network_files,
    make_spec,
)
from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from pytest_ocibuild.errors import BundleError, InvalidRequest, RuntimeUnavailable

D = Digest.of(b"x")
CANON = IdMaps.canonical()


def req(**kw: Any) -> BuildRequest:
    base: dict[str, Any] = {"command_args": ("/inputs/busybox", "true")}
    base.update(kw)
    return BuildRequest(**base)


def spec(request: BuildRequest | None = None, **kw: Any) -> dict[str, Any]:
    kw.setdefault("cgroups", True)  # as root, whoever runs the tests
    return make_spec(request or req(), id_maps=CANON, **kw)


def ns(s: dict[str, Any]) -> list[str]:
    return [n["type"] for n in s["linux"]["namespaces"]]


def mount(s: dict[str, Any], dest: str) -> dict[str, Any]:
    found = [m for m in s["mounts"] if m["destination"] == dest]
    assert len(found) == 1, (dest, found)
    return found[0]


def dests(s: dict[str, Any]) -> list[str]:
    return [m["destination"] for m in s["mounts"]]


NIX = req(
    inputs={"aaa-in": FileNode(D, 1), "bbb-dir": DirectoryNode(D, 0), "ccc-ln": SymlinkNode(b"x")},
    command_args=("/bin/sh", "-c", "true"),
    scratch_paths=("build", "nix/store"),
    inputs_dir="nix/store",
    outputs=("nix/store/out",),
    environment_vars=(EnvVar("A", b"1"), EnvVar("B", b"x=y"), EnvVar("C", b"")),
    constraints=Constraints(available_ro_paths=("/etc/ssl", "/usr"), provide_bin_sh=True,
                            network_access=True),
    additional_files=(AdditionalFile("build/.attr-x", b"v"),),
)

VARIANTS = {
    "default": req(),
    "nix": NIX,
    "not-rootless": req(),
    "network": req(constraints=Constraints(network_access=True)),
    "nested-scratch": req(scratch_paths=("a", "a/b", "build"), working_dir="a/b"),
}


# -- the spec -------------------------------------------------------------------------------


def test_basic_shape() -> None:
    s = spec(req(working_dir="a/b", scratch_paths=("a/b",)))
    assert s["ociVersion"] == "1.0.2"
    assert s["root"] == {"path": "root", "readonly": False}  # only /tmp is build-writable
    assert s["hostname"] == "localhost"
    p = s["process"]
    assert p["args"] == ["/inputs/busybox", "true"]
    assert p["cwd"] == "/a/b"
    assert p["user"] == {"uid": 1000, "gid": 100}
    assert p["terminal"] is False
    assert p["noNewPrivileges"] is True
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                            {"type": "RLIMIT_FSIZE", "hard": (10 << 30) + 1,
                             "soft": (10 << 30) + 1}]  # cgroups: pids as a cgroup limit
    # Nix masks nothing in /proc
    assert "maskedPaths" not in s["linux"] and "readonlyPaths" not in s["linux"]


def test_pure_and_deterministic() -> None:
    a = json.dumps(spec(NIX), sort_keys=True)
    b = json.dumps(make_spec(copy.deepcopy(NIX), id_maps=IdMaps.canonical(), cgroups=True),
                   sort_keys=True)
    assert a == b
    assert "/tmp" not in a.replace('"/tmp"', "")  # no host temp paths leak in


def test_build_process_holds_no_capabilities() -> None:
    for rootless in (True, False):
        caps = spec(rootless=rootless)["process"]["capabilities"]
        assert set(caps) == {"bounding", "effective", "inheritable", "permitted", "ambient"}
        assert all(v == [] for k, v in caps.items() if k != "bounding")
        # the bounding set is full, as Nix leaves it; it grants nothing by itself
        assert len(caps["bounding"]) == 41 and "CAP_SYS_ADMIN" in caps["bounding"]
    assert spec()["process"]["noNewPrivileges"] is True


def test_namespaces_no_network_rootless() -> None:
    s = spec()
    assert ns(s) == ["pid", "ipc", "uts", "mount", "network", "user"]
    assert "cgroup" not in ns(s)  # facts.md: a cgroup namespace breaks nested runc
    assert s["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": 1000, "size": 1},
        {"containerID": 1000, "hostID": 100000, "size": 1},
    ]
    assert s["linux"]["gidMappings"] == [
        {"containerID": 0, "hostID": 100, "size": 1},
        {"containerID": 100, "hostID": 100000, "size": 1},
    ]


def test_namespaces_with_network_and_not_rootless() -> None:
    s = spec(req(constraints=Constraints(network_access=True)), rootless=False)
    assert ns(s) == ["pid", "ipc", "uts", "mount"]
    assert "uidMappings" not in s["linux"] and "gidMappings" not in s["linux"]
    assert "/sys" not in dests(s)
    assert "gid=5" in mount(s, "/dev/pts")["options"]


def test_rootless_default_mounts() -> None:
    s = spec()
    # Nix's /dev: host nodes bound one by one, devpts, a tmpfs on /dev/shm; no mqueue, no /sys
    assert dests(s)[:10] == ["/proc", "/dev", "/dev/full", "/dev/null", "/dev/random",
                             "/dev/tty", "/dev/urandom", "/dev/zero", "/dev/pts", "/dev/shm"]
    assert not any(d.startswith(("/sys", "/dev/mqueue")) for d in dests(s))
    dev = mount(s, "/dev")  # a bind at /dev: runc then leaves /dev alone
    assert dev["source"] == "dev" and "rbind" in dev["options"]
    assert mount(s, "/dev/null") == {"destination": "/dev/null", "type": "none",
                                     "source": "/dev/null", "options": ["bind"]}
    assert "gid=5" not in mount(s, "/dev/pts")["options"]
    assert "/tmp" not in dests(s)  # a 1777 directory of root/, as in Nix's chroot


def test_scratch_and_whole_inputs_mounts() -> None:
    s = spec(req(scratch_paths=("build", "nix/store"), inputs_dir="in/puts"))
    b = mount(s, "/build")
    assert b == {"destination": "/build", "type": "none", "source":
                 f"scratch/{scratch_name('build')}", "options": ["rbind", "rw"]}
    assert mount(s, "/nix/store")["source"] == f"scratch/{scratch_name('nix/store')}"
    i = mount(s, "/in/puts")
    assert i["source"] == "inputs"
    assert i["options"] == ["rbind", "ro", "nosuid", "nodev"]
    assert dests(s).index("/build") < dests(s).index("/nix/store") < dests(s).index("/in/puts")


def test_inputs_inside_scratch_bound_per_name_after_scratch() -> None:
    s = spec(NIX)
    d = dests(s)
    assert "/nix/store" in d
    assert mount(s, "/nix/store/aaa-in")["source"] == "inputs/aaa-in"
    assert mount(s, "/nix/store/bbb-dir")["options"] == ["rbind", "ro", "nosuid", "nodev"]
    assert "/nix/store/ccc-ln" not in d  # symlinks are created in the scratch dir instead
    assert d.index("/nix/store") < d.index("/nix/store/aaa-in")
    assert not any(m["source"] == "inputs" for m in s["mounts"])


def test_scratch_inside_inputs_dir_refused() -> None:
    with pytest.raises(InvalidRequest, match="inside inputs_dir"):
        spec(req(scratch_paths=("nix/store/tmp",), inputs_dir="nix/store", working_dir="nix"))


def test_ro_paths_bin_sh_and_network_files() -> None:
    s = spec(NIX, sandbox_shell="/opt/sh")
    for p in ("/etc/ssl", "/usr"):
        assert mount(s, p) == {"destination": p, "type": "none", "source": p,
                               "options": ["rbind", "ro", "nosuid", "nodev"]}
    assert mount(s, "/bin/sh")["source"] == "/opt/sh"
    assert dests(s)[-3:] == list(NETWORK_FILES)
    s = spec(NIX, network_files=("/etc/hosts",))
    assert dests(s)[-1] == "/etc/hosts" and "/etc/resolv.conf" not in dests(s)
    plain = spec(req())
    assert "/bin/sh" not in dests(plain)
    assert not set(NETWORK_FILES) & set(dests(plain))


def test_bin_sh_without_shell_refused() -> None:
    with pytest.raises(InvalidRequest, match="provide_bin_sh"):
        spec(req(constraints=Constraints(provide_bin_sh=True)), sandbox_shell=None)


def test_host_network_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    assert host_network_files((str(tmp_path / "a"), str(tmp_path / "b"))) == (
        str(tmp_path / "a"),)


def test_env_strings() -> None:
    assert spec(NIX)["process"]["env"] == ["A=1", "B=x=y", "C="]
    s = spec(req(environment_vars=(EnvVar("U", "é".encode()),)))
    assert s["process"]["env"] == ["U=é"]


def test_env_non_utf8_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"BAD is not valid UTF-8"):
        spec(req(environment_vars=(EnvVar("BAD", b"\xff\xfe"),)))


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_spec_validates(name: str) -> None:
    s = spec(VARIANTS[name], rootless=name != "not-rootless")
    validate_spec(s)
    validate_spec(make_spec(VARIANTS[name], id_maps=IdMaps.detect()))


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("ociVersion",), 1, "ociVersion"),
        (("process", "user", "uid"), -1, "process/user/uid"),
        (("linux", "namespaces", 0, "type"), "bogus", "linux/namespaces/0"),
        (("mounts", 0, "destination"), 5, "mounts/0/destination"),
        (("process", "rlimits", 0, "soft"), "x", "process/rlimits/0/soft"),
    ],
)
def test_schema_rejects(path: tuple[Any, ...], value: Any, where: str) -> None:
    s = spec()
    target: Any = s
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(BundleError, match=f"at {where}"):
        validate_spec(s)


def test_schema_dir_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OCIBUILD_OCI_SCHEMA_DIR", str(tmp_path))
    with pytest.raises(SchemaUnavailable, match="OCIBUILD_OCI_SCHEMA_DIR"):
        validate_spec(spec())


# -- id maps --------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_detect_by_name_first_match(tmp_path: Path) -> None:
    sub = write(tmp_path, "subuid", "# c\nother:1:5\nbad line\nalice:x:9\nalice:200000:65536\n"
                "alice:300000:1\n")
    subg = write(tmp_path, "subgid", "1234:400000:10\n")
    m = IdMaps.detect(uid=1234, gid=55, user="alice", subuid_path=sub, subgid_path=subg)
    assert m.uid_mappings == ((0, 1234, 1), (1000, 200000, 1))
    assert m.gid_mappings == ((0, 55, 1), (100, 400000, 1))
    assert m.host_uid(1000) == 200000 and m.host_gid(0) == 55
    with pytest.raises(KeyError):
        m.host_uid(5)


def test_detect_skips_empty_ranges(tmp_path: Path) -> None:
    sub = write(tmp_path, "subuid", "bob:100:0\nbob:500:2\n")
    m = IdMaps.detect(uid=7, gid=7, user="bob", subuid_path=sub, subgid_path=sub)
    assert m.uid_mappings[1] == (1000, 500, 1)


def test_detect_root_without_subuid(tmp_path: Path) -> None:
    m = IdMaps.detect(uid=0, gid=0, user="root", subuid_path=tmp_path / "none",
                      subgid_path=tmp_path / "none")
    # the build user is an id no account has (ids.ID_START's range), never host 1000
    build = ID_START + BLOCK
    assert m.uid_mappings == ((0, 0, 1), (1000, build, 1))
    assert m.gid_mappings == ((0, 0, 1), (100, build, 1))
    assert IdMaps.detect(uid=0, gid=0, user="root", subuid_path=tmp_path / "none",
                         subgid_path=tmp_path / "none", slot=1).host_uid(1000) == build + BLOCK


def test_detect_unprivileged_without_subuid(tmp_path: Path) -> None:
    sub = write(tmp_path, "subuid", "someoneelse:100000:65536\n")
    with pytest.raises(RuntimeUnavailable, match="add a line like 'carol:100000:65536'"):
        IdMaps.detect(uid=1500, gid=1500, user="carol", subuid_path=sub, subgid_path=sub)


def test_detect_overlap_refused(tmp_path: Path) -> None:
    sub = write(tmp_path, "subuid", "dave:1500:10\n")
    with pytest.raises(RuntimeUnavailable, match="both container root and the build user"):
        IdMaps.detect(uid=1500, gid=9, user="dave", subuid_path=sub, subgid_path=sub)


def test_detect_this_host() -> None:
    m = IdMaps.detect()
    import os

    assert m.host_uid(0) == os.geteuid() and m.host_gid(0) == os.getegid()
    assert m.host_uid(1000) != os.geteuid()


def test_canonical_and_to_spec() -> None:
    assert IdMaps.canonical() == CANON
    assert CANON.to_spec()["uidMappings"][1] == {"containerID": 1000, "hostID": 100000, "size": 1}
