"""Results of Nix builds kept by derivation path (``<root>/<drv base name>.json``).

A record maps each output name to its PathInfo (path, castore node, NAR hash and size,
references, content address). A derivation's outputs are a function of the derivation, so a
record stays valid while its castore objects exist; a rebuild of a recorded derivation is a
lookup. Each registered output is also kept by store path (``<root>/paths/<base name>.json``):
an output path that is valid is not built again, whatever derivation asks for it (Nix checks
the validity of output paths before building).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from pytest_ocibuild.build.atomic import atomic_write
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.closure import PathInfo, node_present

RECORD_VERSION = 1


class DrvResults:
    """Output PathInfos by derivation path, on disk under ``root`` and in memory."""

    def __init__(self, store: Store, root: Path | str) -> None:
        self.store = store
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        (self.root / "paths").mkdir(exist_ok=True)
        self._mem: dict[str, dict[str, PathInfo]] = {}
        self._lock = threading.Lock()

    def _file(self, drv_path: str) -> Path:
        return self.root / f"{os.path.basename(drv_path)}.json"

    def get(self, drv_path: str) -> dict[str, PathInfo] | None:
        """The recorded outputs of ``drv_path``, or None (also if objects went missing)."""
        with self._lock:
            if drv_path in self._mem:
                return self._mem[drv_path]
        try:
            data = json.loads(self._file(drv_path).read_bytes())
            if data.get("version") != RECORD_VERSION or data.get("drvPath") != drv_path:
                return None
            outputs = {o: PathInfo.from_json(d) for o, d in data["outputs"].items()}
        except (OSError, ValueError, KeyError, TypeError, NixError):
            return None
        if not all(node_present(self.store, i.node) for i in outputs.values()):
            return None
        with self._lock:
            self._mem[drv_path] = outputs
        return outputs

    def valid_path(self, path: str) -> PathInfo | None:
        """The registration of output path ``path`` if some derivation built it (and its
        objects are still in the castore)."""
        try:
            info = PathInfo.from_json(json.loads(
                (self.root / "paths" / f"{os.path.basename(path)}.json").read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, NixError):
            return None
        return info if info.path == path and node_present(self.store, info.node) else None

    def put(self, drv_path: str, outputs: Mapping[str, PathInfo]) -> None:
        data = {"version": RECORD_VERSION, "drvPath": drv_path,
                "outputs": {o: i.to_json() for o, i in sorted(outputs.items())}}
        for info in outputs.values():
            atomic_write(self.root / "paths" / f"{os.path.basename(info.path)}.json",
                         json.dumps(info.to_json(), sort_keys=True).encode(), self.root / "tmp")
        atomic_write(self._file(drv_path), json.dumps(data, sort_keys=True).encode(),
                     self.root / "tmp")
        with self._lock:
            self._mem[drv_path] = dict(outputs)
