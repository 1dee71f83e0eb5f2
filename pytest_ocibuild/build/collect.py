"""Collecting a finished build's outputs: ingest each into the castore, then refscan them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pytest_ocibuild.build.bundle import BundleLayout
from pytest_ocibuild.build.events import Listener, phase
from pytest_ocibuild.build.logs import log_tail
from pytest_ocibuild.build.refscan import scan_node
from pytest_ocibuild.build.request import BuildRequest
from pytest_ocibuild.castore.ingest import UnsupportedFileType, ingest_path
from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import BuildFailed


def collect_outputs(
    store: Store, request: BuildRequest, layout: BundleLayout, log_path: Path, shown: Path,
    listener: Listener | None = None,
) -> tuple[tuple[Node, ...], tuple[tuple[int, ...], ...]]:
    """Ingest every output, reached without following the build's symlinks, and scan
    what was stored (not the host tree again) for the request's needles (``Phase``
    ``refscan`` to ``listener`` before the first scan)."""
    needles = [n.encode() for n in request.refscan_needles]
    nodes: list[Node] = []
    found: list[tuple[int, ...]] = []
    for output in request.outputs:
        try:
            with layout.open_output(output) as entry:
                if entry is None:
                    raise BuildFailed(
                        f"build did not produce output {output!r}",
                        reason="missing-output", detail=log_tail(log_path),
                        log_path=str(shown),
                    )
                if request.reject_writable_outputs and not stat.S_ISLNK(entry.mode) \
                        and entry.mode & 0o022:
                    raise BuildFailed(
                        f"output {output!r} is writable by group or others (mode "
                        f"{stat.S_IMODE(entry.mode):04o})", reason="suspicious-output",
                        path=output)
                try:
                    node = ingest_path(store, entry.path)
                except UnsupportedFileType as e:
                    rel = os.path.relpath(e.path, entry.path)
                    where = output if rel == "." else f"{output}/{rel}"
                    raise BuildFailed(
                        f"output {output!r}: {where} is {e.kind}, which an output may "
                        "not hold (only files, directories and symlinks)",
                        reason="output-rejected", path=where) from e
        except BuildFailed as e:
            e.log_path = e.log_path or str(shown)
            e.detail = e.detail or log_tail(log_path)
            raise
        nodes.append(node)
    if needles:
        phase(listener, "refscan")
    for node in nodes:
        found.append(tuple(sorted(scan_node(store, node, needles))) if needles else ())
    return tuple(nodes), tuple(found)
