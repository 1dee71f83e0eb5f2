"""Bundle-relative names and the host paths of a bundle (``BundleLayout``)."""

from __future__ import annotations

import base64
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from pytest_ocibuild.build.beneath import Confined, open_beneath
from pytest_ocibuild.build.request import BuildRequest, is_path_prefix
from pytest_ocibuild.errors import BundleError

DEV_SOURCE = "dev"  # the bundle directory bound at /dev (spec.default_mounts)


@functools.lru_cache(maxsize=1024)
def scratch_name(path: str) -> str:
    """Directory name under ``scratch/`` for scratch path ``path``: base32 of blake3(path)."""
    return base64.b32encode(blake3.blake3(path.encode()).digest()).decode()


def find_path_in_scratch(path: str, scratch_paths: Sequence[str]) -> tuple[str, str] | None:
    """``(scratch_path, relative_rest)`` for the longest scratch path containing ``path``.

    Only whole components match (``nix/sto`` does not contain ``nix/store/x``). ``path``
    equal to a scratch path gives an empty rest. None if no scratch path contains it.
    """
    best: str | None = None
    for s in scratch_paths:
        if is_path_prefix(s, path) and (best is None or len(s) > len(best)):
            best = s
    if best is None:
        return None
    return best, path[len(best) + 1 :]


@dataclass(frozen=True, slots=True)
class BundleLayout:
    """Host paths of a bundle made by ``make_bundle``."""

    bundle_dir: Path
    request: BuildRequest = field(repr=False)
    rootfs: Path | None = None  # the root filesystem when it is not the bundle's own root/

    @property
    def config_path(self) -> Path:
        return self.bundle_dir / "config.json"

    @property
    def inputs_dir(self) -> Path:
        """Where inputs must be provided (mounted at ``/<inputs_dir>`` in the container)."""
        return self.bundle_dir / "inputs"

    @property
    def root_dir(self) -> Path:
        return self.rootfs if self.rootfs is not None else self.bundle_dir / "root"

    @property
    def scratch_dirs(self) -> dict[str, Path]:
        """Scratch path -> host directory."""
        return {p: self.scratch_dir(p) for p in self.request.scratch_paths}

    def scratch_dir(self, scratch_path: str) -> Path:
        return self.bundle_dir / "scratch" / scratch_name(scratch_path)

    def host_path(self, path: str) -> Path:
        """Host path of container path ``/<path>`` inside a scratch path (BundleError if not)."""
        found = find_path_in_scratch(path, self.request.scratch_paths)
        if found is None:
            raise BundleError(f"{path!r} is not inside any scratch path")
        scratch, rest = found
        base = self.scratch_dir(scratch)
        return base / rest if rest else base

    def output_host_path(self, output: str) -> Path:
        """Where output ``output`` (an element of ``request.outputs``) appears on the host.

        Only for showing a path: read what the build wrote through ``open_output``, which
        follows no symlink the build made."""
        return self.host_path(output)

    def open_output(self, output: str) -> contextlib.AbstractContextManager[Confined | None]:
        """Output ``output`` reached beneath its scratch directory (see build.beneath)."""
        found = find_path_in_scratch(output, self.request.scratch_paths)
        if found is None:
            raise BundleError(f"{output!r} is not inside any scratch path")
        return open_beneath(self.scratch_dir(found[0]), found[1], output=output)
