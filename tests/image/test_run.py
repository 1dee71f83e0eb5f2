"""Unpacking a layout: layers in order, OCI whiteouts, entries outside the rootfs refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pytest_ocibuild.errors import InvalidRequest
from pytest_ocibuild.image.run import read_image, unpack


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def layout(root: Path, layers: list[bytes]) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = put(json.dumps({"config": {"Cmd": ["/bin/x"]}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2, "config": config,
                               "layers": [put(lay) for lay in layers]}).encode())
    (root / "index.json").write_text(json.dumps({"manifests": [
        {**manifest, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return root


def test_layers_apply_in_order_with_whiteouts(tmp_path: Path) -> None:
    oci = layout(tmp_path / "oci", [
        _tar([("a", None), ("a/keep", b"1"), ("a/gone", b"2"), ("o", None), ("o/old", b"3"),
              ("f", b"first")]),
        _tar([("a/.wh.gone", b""), ("o/.wh..wh..opq", b""), ("o/new", b"4"), ("f", b"second")]),
    ])
    config = unpack(oci, tmp_path / "rootfs", "v1")
    assert config["config"]["Cmd"] == ["/bin/x"]
    files = sorted(p.relative_to(tmp_path / "rootfs").as_posix()
                   for p in (tmp_path / "rootfs").rglob("*"))
    assert files == ["a", "a/keep", "f", "o", "o/new"]
    assert (tmp_path / "rootfs" / "f").read_bytes() == b"second"


def test_escaping_entries_and_unknown_tags_are_refused(tmp_path: Path) -> None:
    oci = layout(tmp_path / "oci", [_tar([("../outside", b"x")])])
    with pytest.raises(InvalidRequest, match="outside the root filesystem"):
        unpack(oci, tmp_path / "rootfs", "v1")
    assert not (tmp_path / "outside").exists()
    with pytest.raises(InvalidRequest, match="no image tagged 'latest'"):
        read_image(oci, "latest")


def test_an_entry_through_an_earlier_symlink_is_refused(tmp_path: Path) -> None:
    """A layer making ``a -> <outside>`` and then ``a/evil``: nothing is written outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("a")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        evil = tarfile.TarInfo("a/evil")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    oci = layout(tmp_path / "oci", [buf.getvalue()])
    with pytest.raises(InvalidRequest, match="'a/evil' would be written outside"):
        unpack(oci, tmp_path / "rootfs", "v1")
    assert os.listdir(outside) == []
