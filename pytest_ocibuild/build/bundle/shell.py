"""``BundleShell``: the directories of a bundle that a later build with the same scratch
paths can reuse."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import blake3

from pytest_ocibuild.build.atomic import remove_tree
from pytest_ocibuild.build.bundle.layout import DEV_SOURCE, scratch_name
from pytest_ocibuild.build.request import BuildRequest


@dataclass(frozen=True, slots=True)
class BundleShell:
    """The directories of a bundle that outlive its build unchanged but for their contents:
    the bundle directory, ``inputs/`` (which the input provider leaves empty) and
    ``scratch/<name>/`` for each scratch path. Requests with the same scratch paths (``key``)
    can reuse one shell, one build at a time (``make_bundle(..., reuse=True)``), instead of
    creating and deleting these directories for every build: on file systems that scan
    recently freed inodes on every allocation (ext4 without a journal), that churn made
    each build several milliseconds slower the more builds had run in the last minute."""

    names: tuple[str, ...]  # scratch_name of each scratch path

    @classmethod
    def of(cls, request: BuildRequest) -> BundleShell:
        return cls(tuple(scratch_name(p) for p in request.scratch_paths))

    @property
    def key(self) -> str:
        return "bundle-" + blake3.blake3("/".join(self.names).encode()).hexdigest()[:25]

    def make(self, bundle: Path) -> None:
        """Create the shell at ``bundle`` (which must not exist)."""
        bundle.mkdir()
        (bundle / "inputs").mkdir()
        (bundle / "scratch").mkdir()
        for name in self.names:
            (bundle / "scratch" / name).mkdir()

    def mark(self, bundle: Path) -> tuple[int, ...]:
        """What ``reset`` checks the shell against: its directories' inode numbers."""
        return tuple(os.lstat(p).st_ino for p in self._dirs(bundle))

    def reset(self, bundle: Path, made: tuple[int, ...]) -> bool:
        """Empty the scratch directories after a build; False (remove the shell instead) if
        anything is not as ``make`` left it: a directory replaced, ``inputs/`` not empty, or
        entries other than the shell's, config.json and a ``dev`` symlink."""
        try:
            if tuple(os.lstat(p).st_ino for p in self._dirs(bundle)) != made:
                return False
            extra = set(os.listdir(bundle)) - {"inputs", "scratch", "config.json", DEV_SOURCE}
            if extra or set(os.listdir(bundle / "scratch")) != set(self.names) \
                    or os.listdir(bundle / "inputs"):
                return False
            if os.path.lexists(bundle / DEV_SOURCE) and not os.path.islink(bundle / DEV_SOURCE):
                return False
            for name in self.names:
                scratch = bundle / "scratch" / name
                os.chmod(scratch, 0o700)  # the build may have made it read-only
                with os.scandir(scratch) as it:
                    entries = [e.name for e in it]
                for entry in entries:
                    remove_tree(scratch / entry)
                if os.listdir(scratch):
                    return False
        except OSError:
            return False
        return True

    def _dirs(self, bundle: Path) -> list[Path]:
        return [bundle, bundle / "inputs", bundle / "scratch",
                *(bundle / "scratch" / n for n in self.names)]
