"""The image checked by real OCI tools: skopeo reads and copies it, umoci unpacks it into a
bundle runc starts, and the unpacked /nix/store is the closure, NAR hash for NAR hash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_ocibuild.image.run import run_image
from tests.image.conftest import APP_OUTPUT, Built, CliImage

TOOLS = ("skopeo", "umoci", "runc", "nix-hash")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (apt-get install -y skopeo umoci runc nix-bin)")


def tool(*argv: str) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"{' '.join(argv)}: {res.stderr}"
    return res.stdout


def test_skopeo_inspects_and_copies_the_layout(app_image: CliImage, tmp_path: Path) -> None:
    doc = app_image.doc
    seen = json.loads(tool("skopeo", "inspect", f"oci:{app_image.out}:latest"))
    assert seen["Digest"] == doc["manifest"]
    assert seen["Layers"] == [lay["digest"] for lay in doc["layers"]]
    assert len(seen["Layers"]) == 3
    assert seen["Env"] == ["GREETING=hi"]
    archive = tmp_path / "copied.tar"
    tool("skopeo", "copy", f"oci:{app_image.out}:latest",
         f"docker-archive:{archive}:ocibuild/test:latest")
    diff_ids = [lay["diffId"] for lay in doc["layers"]]
    copied = json.loads(tool("skopeo", "inspect", f"docker-archive:{archive}"))
    assert copied["Layers"] == diff_ids  # docker archives hold the uncompressed tars
    # our own --docker-archive, looked up by the tag it carries
    ours = json.loads(tool("skopeo", "inspect",
                           f"docker-archive:{app_image.archive}:ocibuild/img-app:latest"))
    assert ours["Layers"] == diff_ids


@pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack and runc run as root")
def test_umoci_unpacks_a_bundle_runc_runs_with_the_closure_in_it(
        app_image: CliImage, built: Built, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    tool("umoci", "unpack", "--image", f"{app_image.out}:latest", str(bundle))
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_bytes())
    assert config["process"]["args"] == [built.app_cmd()]
    config["process"]["terminal"] = False  # umoci asks for a tty; the test has none
    config_path.write_text(json.dumps(config))
    cid = f"ocibuild-test-{os.getpid()}"
    try:
        out = tool("runc", "--root", str(tmp_path / "state"), "run", "--bundle", str(bundle),
                   cid)
    finally:
        subprocess.run(["runc", "--root", str(tmp_path / "state"), "delete", "-f", cid],
                       capture_output=True, check=False)
    assert out == APP_OUTPUT
    # the unpacked /nix/store is exactly the closure, each path with its NAR hash
    infos = built.infos("app")
    store = bundle / "rootfs" / "nix" / "store"
    assert sorted(os.listdir(store)) == sorted(os.path.basename(p) for p in infos)
    for path, info in infos.items():
        got = tool("nix-hash", "--type", "sha256", "--base32", str(store / path[11:])).strip()
        assert got == info.nar_hash.nix32, path
        assert info.nar_size > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="runc run as root")
def test_our_unpacker_runs_the_same_command(app_image: CliImage, tmp_path: Path) -> None:
    ran = run_image(app_image.out, tmp_path)
    assert (ran.exit_code, ran.stdout) == (0, APP_OUTPUT), ran.stderr
    ran = run_image(app_image.out, tmp_path, ["/no/such/program"])
    assert ran.exit_code != 0
