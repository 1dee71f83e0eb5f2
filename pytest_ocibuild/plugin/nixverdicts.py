"""Agreeing comparisons with nix-build, remembered so a warm rerun need not run Nix again.

A record is kept per derivation and our outcome: ``<root>/<drv base name>-<fingerprint>.json``
holds nix-build's Result for that derivation, written only when it agreed with ours. It is
used again only for the same derivation and the same outcome of ours (same output paths, NAR
hashes, sizes and references, or the same failure), and only while Nix's output paths are
still in /nix/store. Nix never rebuilds a valid path, so a rerun of nix-build would report the
same outputs. Disagreements are never recorded: they run Nix again every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pytest_ocibuild.build.atomic import atomic_write
from pytest_ocibuild.plugin.nixdiff import OutputInfo, Result, Side

VERSION = 1  # of the record and of the comparison it stands for


def fingerprint(ours: Side) -> str:
    """What of our outcome the comparison looked at, hashed (16 hex digits)."""
    if ours.error is not None:
        what: object = {"error": ours.error}
    else:
        what = {name: [o.path, o.nar_hash, o.nar_size, sorted(o.references)]
                for name, o in sorted(ours.outputs.items())}
    text = json.dumps([VERSION, ours.drv_path, what], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Verdicts:
    """nix-build Results that agreed with ours, on disk under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _file(self, drv_path: str, ours: Side) -> Path:
        return self.root / f"{os.path.basename(drv_path)}-{fingerprint(ours)}.json"

    def get(self, drv_path: str, ours: Side) -> Result | None:
        """nix-build's recorded Result, if it agreed with ``ours`` and is still valid."""
        try:
            data = json.loads(self._file(drv_path, ours).read_bytes())
            if data["version"] != VERSION or data["drvPath"] != drv_path:
                return None
            res = Result(rc=int(data["rc"]), stdout=data["stdout"], stderr=data["stderr"],
                         drv_path=data["resultDrvPath"])
            for name, o in data["outputs"].items():
                res.outputs[name] = OutputInfo(o["path"], o["narHash"], int(o["narSize"]),
                                               list(o["references"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not all(os.path.lexists(o.path) for o in res.outputs.values()):
            return None  # garbage-collected: build with Nix again
        return res

    def put(self, drv_path: str, ours: Side, nix: Result) -> None:
        """Record ``nix`` (which agreed with ``ours``); atomic, last writer wins."""
        data = {"version": VERSION, "drvPath": drv_path, "rc": nix.rc, "stdout": nix.stdout,
                "stderr": nix.stderr, "resultDrvPath": nix.drv_path,
                "outputs": {name: {"path": o.path, "narHash": o.nar_hash,
                                   "narSize": o.nar_size, "references": o.references}
                            for name, o in nix.outputs.items()}}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self._file(drv_path, ours), json.dumps(data, sort_keys=True).encode(),
                     self.root / "tmp", fsync=False)
