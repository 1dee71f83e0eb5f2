"""FakeRuntime: plays back scripted outcomes instead of running anything.

For unit tests of the executor's cache, single-flight, failure and timeout logic only: real
builds and integration tests use a real backend. An outcome says what the "build" prints,
which files it leaves (container paths, resolved through the bundle's mounts as a runtime
would) and how it ends.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pytest_ocibuild.build.ids import IdMaps, caller_id_maps
from pytest_ocibuild.build.logs import runs_path
from pytest_ocibuild.build.runtime.base import ExitStatus, OnOutput


@dataclass(frozen=True)
class Outcome:
    """What one run does: write ``files`` (container path -> bytes; a path ending in ``/``
    is a directory), print ``output`` on stdout, take ``seconds``, exit with ``code``."""

    code: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    output: bytes = b""
    seconds: float = 0.0


Script = Callable[[dict[str, Any]], Outcome]


class FakeRuntime:
    """Runs nothing: each ``run`` applies ``script(config)`` (default: ``Outcome()``)."""

    name = "fake"

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda _config: Outcome())
        self.runs: list[str] = []  # container ids, in the order run
        self._lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        return None

    def id_maps(self) -> IdMaps | None:
        """As a normal user, the caller's own ids: this process writes the "build's" files
        (ChoosesIds); as root, the executor's."""
        return caller_id_maps() if os.geteuid() != 0 else None

    def run(
        self, bundle: Path, container_id: str, *, log: Path, timeout: float | None,
        max_silent: float | None = None, on_output: OnOutput | None = None,
    ) -> ExitStatus:
        config = json.loads((bundle / "config.json").read_text())
        with self._lock:
            self.runs.append(container_id)
        outcome = self.script(config)
        with open(log, "ab") as f, open(runs_path(log), "ab") as runs:
            f.write(outcome.output)
            if outcome.output:  # its stream record (build.logs): stdout, length
                runs.write(b"\x01" + len(outcome.output).to_bytes(4, "little"))
        if outcome.output and on_output is not None:  # as a real runtime's reaper would
            on_output("stdout", outcome.output)
        limit = max_silent if not outcome.output else None
        stop = min((t for t in (timeout, limit) if t is not None), default=None)
        if stop is not None and outcome.seconds > stop:
            time.sleep(stop)
            silent = stop == limit
            return ExitStatus(code=137, timed_out=not silent, duration=stop,
                              limit="silent-timeout" if silent else None)
        time.sleep(outcome.seconds)
        for path, data in outcome.files.items():
            host = host_path(bundle, config, path)
            if path.endswith("/"):
                host.mkdir(parents=True, exist_ok=True)
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_bytes(data)
        return ExitStatus(code=outcome.code, duration=outcome.seconds)


def host_path(bundle: Path, config: dict[str, Any], path: str) -> Path:
    """Where container ``path`` is on the host: under the bind mount with the longest
    destination holding it, else under the root."""
    target = PurePosixPath(path)
    best: tuple[PurePosixPath, Path] = (PurePosixPath("/"), bundle / config["root"]["path"])
    for m in config.get("mounts", []):
        dest = PurePosixPath(m["destination"])
        if m.get("type") in ("bind", "none") and (target == dest or dest in target.parents) \
                and len(dest.parts) > len(best[0].parts):
            best = (dest, bundle / m["source"])
    return best[1].joinpath(*target.relative_to(best[0]).parts)
