"""derivation_to_request: the environment, files, layout and constraints Nix 2.8 gives."""

from __future__ import annotations

import json

import pytest

from pytest_ocibuild.castore.digest import Digest
from pytest_ocibuild.castore.nodes import FileNode
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.closure import PathInfo
from pytest_ocibuild.nix.derivation import Derivation, Output
from pytest_ocibuild.nix.hashes import Hash
from pytest_ocibuild.nix.store_path import hash_placeholder
from pytest_ocibuild.nix.to_request import (
    NixSettings,
    check_platform,
    derivation_to_request,
    fallback_path,
    rewrite_strings,
)

BB = "/nix/store/ipypcmrdcwakpazc347mka792bqdhzim-busybox-dir"
OUT = "/nix/store/wx2mr8mcfl4v88c98m5q9nsvyy99cj8h-inspect"
SECOND = "/nix/store/8nmyp4ig1hnnpagkakjdff608ymzy105-inspect-second"
DRV = "/nix/store/473wy8n98b0ip7qlx5hjbfxgh410phdr-inspect.drv"
SETTINGS = NixSettings(cores=2, environ={"PROBE_IMPURE": "from-client"})


def info(path: str, refs: tuple[str, ...] = ()) -> PathInfo:
    return PathInfo(path=path, node=FileNode(Digest.of(path.encode()), 1),
                    nar_hash=Hash("sha256", bytes(32)), nar_size=100, references=refs)


INPUTS = {BB: info(BB)}


def drv(env: dict[str, str], outputs: dict[str, Output] | None = None) -> Derivation:
    outputs = outputs or {"out": Output(OUT), "second": Output(SECOND)}
    base = {"name": "inspect", "builder": f"{BB}/busybox", "system": "x86_64-linux",
            **{o: out.path for o, out in outputs.items()}}
    return Derivation(outputs=outputs, input_srcs=(BB,), system="x86_64-linux",
                      builder=f"{BB}/busybox", args=("sh", "-c", "true"),
                      env={**base, **env})


def test_environment_of_the_inspect_probe() -> None:
    """The exact `env` Nix showed in docs/nix-sandbox.md (minus SHLVL, set by sh)."""
    d = drv({"passAsFile": "big", "big": "contents of big\n", "custom": "x",
             "outputs": "out second"})
    req = derivation_to_request(d, DRV, INPUTS, settings=SETTINGS)
    assert req.env == {
        "HOME": b"/homeless-shelter", "NIX_BUILD_CORES": b"2", "NIX_BUILD_TOP": b"/build",
        "NIX_LOG_FD": b"2", "NIX_STORE": b"/nix/store", "PATH": b"/path-not-set",
        "PWD": b"/build", "TEMP": b"/build", "TEMPDIR": b"/build", "TERM": b"xterm-256color",
        "TMP": b"/build", "TMPDIR": b"/build",
        "bigPath": b"/build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a",
        "builder": f"{BB}/busybox".encode(), "custom": b"x", "name": b"inspect",
        "out": OUT.encode(), "outputs": b"out second", "passAsFile": b"big",
        "second": SECOND.encode(), "system": b"x86_64-linux",
    }
    [f] = req.additional_files
    assert (f.path, f.contents) == (
        "build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a", b"contents of big\n")
    assert req.working_dir == "build" and req.scratch_paths == ("build", "nix/store")
    assert req.inputs_dir == "nix/store" and list(req.inputs) == [BB.rsplit("/", 1)[1]]
    assert req.outputs == (SECOND[1:], OUT[1:])
    assert req.command_args == (f"{BB}/busybox", "sh", "-c", "true")
    assert not req.constraints.network_access


def test_precedence_follows_init_env() -> None:
    """The derivation may override PATH/HOME/NIX_STORE/NIX_BUILD_CORES, not the rest."""
    over = {k: "mine" for k in ("PATH", "HOME", "NIX_STORE", "NIX_BUILD_CORES", "TMPDIR",
                                 "PWD", "NIX_BUILD_TOP", "NIX_LOG_FD", "TERM")}
    env = derivation_to_request(drv(over), DRV, INPUTS, settings=SETTINGS).env
    assert {k for k in over if env[k] == b"mine"} == {"PATH", "HOME", "NIX_STORE",
                                                     "NIX_BUILD_CORES"}
    assert env["TMPDIR"] == env["PWD"] == b"/build" and env["TERM"] == b"xterm-256color"


def test_fixed_output_gets_network_checked_flag_and_impure_vars() -> None:
    fixed = {"out": Output(OUT, "sha256", "58" * 32)}
    d = drv({"impureEnvVars": "PROBE_IMPURE http_proxy", "outputHash": "x"}, fixed)
    req = derivation_to_request(d, DRV, INPUTS, settings=SETTINGS)
    assert req.constraints.network_access
    env = req.env
    assert env["NIX_OUTPUT_CHECKED"] == b"1"
    assert env["PROBE_IMPURE"] == b"from-client" and env["http_proxy"] == b""
    # not for input-addressed derivations
    plain = derivation_to_request(drv({"impureEnvVars": "PROBE_IMPURE"}), DRV, INPUTS,
                                  settings=SETTINGS).env
    assert "NIX_OUTPUT_CHECKED" not in plain and "PROBE_IMPURE" not in plain


def test_placeholders_are_rewritten_in_env_args_and_files() -> None:
    ph = hash_placeholder("second")
    d = drv({"where": ph, "note": f"file: {ph}\n", "passAsFile": "note"})
    d = Derivation(outputs=d.outputs, input_srcs=d.input_srcs, system=d.system,
                   builder=d.builder, args=("sh", "-c", f"echo {ph}"), env=d.env)
    req = derivation_to_request(d, DRV, INPUTS, settings=SETTINGS)
    assert req.env["where"] == SECOND.encode()
    assert req.command_args[-1] == f"echo {SECOND}"
    assert req.additional_files[0].contents == f"file: {SECOND}\n".encode()


def test_structured_attrs() -> None:
    attrs = {"name": "s", "system": "x86_64-linux", "builder": f"{BB}/busybox",
             "outputs": ["out"], "list": ["x", 1, True, None], "nested": {"a": [1]},
             "passAsFile": ["list"], "s": "it's"}
    d = Derivation(outputs={"out": Output(OUT)}, input_srcs=(BB,), system="x86_64-linux",
                   builder=f"{BB}/busybox", env={"__json": json.dumps(attrs), "out": OUT})
    req = derivation_to_request(d, DRV, INPUTS, settings=SETTINGS)
    env = req.env
    assert "out" not in env and "name" not in env and "listPath" not in env
    assert env["NIX_ATTRS_JSON_FILE"] == b"/build/.attrs.json"
    files = {f.path: f.contents for f in req.additional_files}
    assert json.loads(files["build/.attrs.json"])["outputs"] == {"out": OUT}
    assert b", " not in files["build/.attrs.json"]  # compact
    assert files["build/.attrs.sh"] == (
        "declare builder='/nix/store/ipypcmrdcwakpazc347mka792bqdhzim-busybox-dir/busybox'\n"
        "declare -a list=('x' 1 1 '' )\n"
        "declare name='s'\n"
        f"declare -A outputs=(['out']='{OUT}' )\n"
        "declare -a passAsFile=('list' )\n"
        "declare s='it'\\''s'\n"
        "declare system='x86_64-linux'\n").encode()


def test_floating_outputs_are_built_at_the_fallback_path() -> None:
    d = drv({}, {"out": Output("", "r:sha256", "")})
    req = derivation_to_request(d, DRV, INPUTS, settings=SETTINGS)
    fb = fallback_path(DRV, d, "out")
    assert req.outputs == (fb.absolute[1:],)
    assert fb.hash_part in req.refscan_needles and "ipypcmrdcwakpazc347mka792bqdhzim" in \
        req.refscan_needles


def test_platform_and_features() -> None:
    odd = Derivation(outputs={"out": Output(OUT)}, system="riscv64-none", builder="/b",
                     env={"name": "unsupported-system"})
    with pytest.raises(NixError, match=r"^a 'riscv64-none' with features \{\} is required to "
                       r"build '/nix/store/.*', but I am a 'x86_64-linux' with features "
                       r"\{benchmark, big-parallel, nixos-test\}$"):
        check_platform(odd, DRV, SETTINGS)
    gpu = drv({"requiredSystemFeatures": "gpu-nonexistent"})
    with pytest.raises(NixError, match=r"with features \{gpu-nonexistent\} is required"):
        check_platform(gpu, DRV, SETTINGS)
    check_platform(drv({"requiredSystemFeatures": "big-parallel"}), DRV, SETTINGS)
    i686 = Derivation(outputs={"out": Output(OUT)}, system="i686-linux", builder="/b",
                      env={"name": "x"})
    check_platform(i686, DRV, SETTINGS)


def test_env_names_with_equals() -> None:
    env = derivation_to_request(drv({"a=b": "c"}), DRV, INPUTS, settings=SETTINGS).env
    assert env["a"] == b"b=c"  # the same `a=b=c` entry in the builder's environ
    with pytest.raises(NixError, match="starts with '='"):
        derivation_to_request(drv({"=x": "c"}), DRV, INPUTS, settings=SETTINGS)


def test_rewrite_strings_applies_each_rewrite_everywhere() -> None:
    assert rewrite_strings(b"/a /b /a", {b"/a": b"X", b"/b": b"Y"}) == b"X Y X"
