"""What a finished build left on the host disk, against its ``disk``/``entries`` budget.

Counted after the container has exited (nothing of the build runs any more, so the trees
are still): every scratch directory, every cache clone and the root's ``/tmp``. Symlinks are
counted, never followed; a file's size counts once however many names it has (ingest stores
its content once). The walk stops as soon as the budget is exceeded.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.bundle import BundleLayout
from pytest_ocibuild.build.limits import Limits, describe_size


class _Over(Exception):
    pass


class Usage:
    """Bytes and entries counted so far, raising _Over past the limits."""

    def __init__(self, limits: Limits) -> None:
        self.max_bytes = limits.disk or 0
        self.max_entries = limits.entries or 0
        self.bytes = 0
        self.entries = 0
        self._seen: set[tuple[int, int]] = set()

    def add(self, st: os.stat_result) -> None:
        self.entries += 1
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in self._seen:
            if st.st_nlink > 1:
                self._seen.add((st.st_dev, st.st_ino))
            self.bytes += st.st_size
        if self.bytes > self.max_bytes or self.entries > self.max_entries:
            raise _Over

    def walk(self, top: Path) -> None:
        """Count what is below ``top`` (not ``top`` itself)."""
        stack = [str(top)]
        while stack:
            try:
                it = os.scandir(stack.pop())
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            with it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    self.add(st)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)


def usage(tops: Iterable[Path], limits: Limits) -> tuple[Usage, bool]:
    """The usage below ``tops`` and whether it exceeds ``limits`` (counting stops there)."""
    u = Usage(limits)
    try:
        for top in tops:
            u.walk(top)
    except _Over:
        return u, True
    return u, False


def check_budget(
    layout: BundleLayout, clones: Mapping[str, Any], limits: Limits
) -> tuple[str, str] | None:
    """``(message, "output-too-large")`` if the build left more than its budget, else None.

    ``clones``: the build's cache clones (objects with a ``path``).
    """
    tops = [*layout.scratch_dirs.values(), *(Path(c.path) for c in clones.values()),
            layout.root_dir / "tmp"]
    u, over = usage(tops, limits)
    if not over:
        return None
    if u.entries > u.max_entries:
        what = f"more than {u.max_entries} files, directories and symlinks"
        setting = "limits.entries"
    else:
        what = f"more than {describe_size(u.max_bytes)}"
        setting = "limits.disk"
    return (f"build left {what} in its scratch paths, caches and /tmp (raise {setting} "
            "if it needs more)", "output-too-large")
