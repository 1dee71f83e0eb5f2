"""What the ``ocibuild_sandbox`` fixture returns: make inputs, build, inspect outputs as trees.

Trees use the notation of YAML cases (``{"dir/file": "contents", "bin/x": {"contents": ...,
"executable": True}, "link": {"symlink": "target"}, "empty": {"dir": True}}``), so a test can
compare ``result.tree("build/out")`` with a literal dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.executor import Executor
from pytest_ocibuild.build.logs import read_stream
from pytest_ocibuild.build.request import Build, BuildRequest, node_to_dict
from pytest_ocibuild.build.request_io import request_from_dict
from pytest_ocibuild.castore.ingest import ingest_path
from pytest_ocibuild.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from pytest_ocibuild.castore.store import Store, read_blob
from pytest_ocibuild.castore.trees import get_directory
from pytest_ocibuild.plugin.case import ROOT, Entry, parse_tree
from pytest_ocibuild.plugin.trees import actual_tree, put_tree, to_notation

SORTED_FIELDS = ("outputs", "scratch_paths")


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A successful build plus the store its outputs live in."""

    build: Build
    store: Store

    @property
    def request(self) -> BuildRequest:
        """The request that was built."""
        return self.build.request

    def node(self, output: str) -> Node:
        """The castore node of ``output`` (KeyError if it is not an output of the request)."""
        try:
            return self.build.output(output)
        except ValueError:
            raise KeyError(f"{output!r} is not an output of this build "
                           f"({list(self.request.outputs)})") from None

    def tree(self, output: str) -> dict[str, Any]:
        """``output`` in case notation; file contents that are not UTF-8 appear as digests."""
        return to_notation(self.entries(output))

    def entries(self, output: str) -> dict[str, Entry]:
        """``output`` as ``{path: Entry}`` (``"."`` is the root when it is not a directory)."""
        return actual_tree(self.store, self.node(output), contents=1 << 20)

    def read(self, output: str, path: str = ROOT) -> bytes:
        """The contents of file ``path`` inside ``output`` (``"."``: the output itself)."""
        node = self.node(output)
        for part in [] if path == ROOT else path.split("/"):
            if not isinstance(node, DirectoryNode):
                raise NotADirectoryError(f"{output}: {path}: {part!r} is not inside a directory")
            try:
                node = get_directory(self.store, node.digest).entries[part.encode()]
            except KeyError:
                raise FileNotFoundError(f"{output}: {path}: no such entry") from None
        if isinstance(node, SymlinkNode):
            raise OSError(f"{output}: {path} is a symlink to {os.fsdecode(node.target)}")
        if not isinstance(node, FileNode):
            raise IsADirectoryError(f"{output}: {path} is a directory")
        data = read_blob(self.store, node.digest)
        assert data is not None, f"blob of {path} missing from the store"
        return data

    def references(self, output: str) -> tuple[str, ...]:
        """The refscan needles found in ``output``."""
        return self.build.references(output)

    @property
    def log(self) -> str:
        """The build's combined stdout and stderr."""
        return _read_text(self.build.log_path)

    @property
    def stdout(self) -> str:
        """The build's stdout alone."""
        return read_stream(self.build.log_path, "stdout").decode(errors="replace")

    @property
    def stderr(self) -> str:
        """The build's stderr alone."""
        return read_stream(self.build.log_path, "stderr").decode(errors="replace")


def _read_text(path: str | None) -> str:
    return Path(path).read_bytes().decode(errors="replace") if path else ""


class Sandbox:
    """Builds requests in throwaway runc containers over the session's castore."""

    def __init__(self, executor: Executor, *, log_dir: Path) -> None:
        self.executor = executor
        self.store = executor.store
        self.log_dir = log_dir
        self._builds = 0

    def file(self, contents: str | bytes, *, executable: bool = False) -> Node:
        """Store a single file; returns its node (usable as an input)."""
        data = contents.encode() if isinstance(contents, str) else contents
        return put_tree(self.store, {ROOT: Entry(kind="file", contents=data,
                                                 executable=executable)})

    def tree(self, notation: Mapping[str, Any]) -> Node:
        """Store a directory written in case notation; returns its node."""
        return put_tree(self.store, parse_tree(notation))

    def host(self, path: str | Path) -> Node:
        """Ingest a host file, directory or symlink; returns its node."""
        return ingest_path(self.store, path)

    def request(self, request: BuildRequest | Mapping[str, Any]) -> BuildRequest:
        """A BuildRequest from a request or a dict in the request-file format.

        In a dict, input values may be nodes, ``{"path": host_path}`` or node dicts, and
        ``outputs`` / ``scratch_paths`` need not be sorted.
        """
        if isinstance(request, BuildRequest):
            return request
        data = dict(request)
        data["inputs"] = {
            name: node_to_dict(v) if isinstance(v, FileNode | DirectoryNode | SymlinkNode) else v
            for name, v in dict(data.get("inputs") or {}).items()
        }
        for key in SORTED_FIELDS:
            if key in data:
                data[key] = sorted(data[key], key=lambda s: str(s).encode())
        return request_from_dict(data, source="sandbox request", ingest=self.host)

    def spec(self, request: BuildRequest | Mapping[str, Any]) -> dict[str, Any]:
        """The config.json the build would run with."""
        return self.executor.spec(self.request(request))

    def build(
        self, request: BuildRequest | Mapping[str, Any], *, timeout: float | None = None
    ) -> BuildResult:
        """Build ``request``; raises BuildFailed (``reason``, ``detail`` = log tail) on failure."""
        self._builds += 1
        log = self.log_dir / f"build-{self._builds}.log"
        build = self.executor.build(self.request(request), timeout=timeout, log=log)
        return BuildResult(build, self.store)
