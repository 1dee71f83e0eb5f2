"""Host-side access to what a build wrote, confined to the build's own directory.

A build controls every name under its scratch directories. Resolving an output path such as
``build/x/shadow`` as a plain host path would follow a symlink ``x -> /etc`` the build made,
and ingest the host's ``/etc/shadow`` with our privileges. So output paths are resolved one
component at a time from a directory fd, each intermediate component opened with
``O_DIRECTORY | O_NOFOLLOW`` (what ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` does in
one call, written out so it works on any kernel): a symlink on the way is refused, never
followed. The last component is looked at with ``lstat`` semantics, so an output that *is* a
symlink is kept as a symlink.

The result is a path through ``/proc/self/fd/<fd>``: the kernel resolves that magic link to the
directory we pinned, not to whatever the name now points at, and everything below it is walked
by ``ingest_path``, which never follows symlinks either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_ocibuild.errors import BuildFailed

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Confined:
    """An entry found beneath a base directory: ``path`` reaches it through the pinned
    parent directory fd (valid only inside ``open_beneath``); ``mode`` is its lstat mode."""

    path: str
    mode: int


def _refuse(output: str, where: str) -> BuildFailed:
    return BuildFailed(
        f"output {output!r} goes through {where!r}, which is not a directory the build made "
        "but a symlink: output paths are resolved without following symlinks",
        reason="output-path-escapes")


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def open_beneath(base: Path, rel: str, *, output: str) -> Iterator[Confined | None]:
    """The entry at ``base/rel`` without following any symlink on the way (None: missing).

    ``rel`` is a clean relative path ('' for ``base`` itself). A symlink as an intermediate
    component raises BuildFailed(reason='output-path-escapes'); a regular file there means the
    output does not exist (None), as the kernel would say ENOTDIR.
    """
    fd = os.open(base, _DIR_FLAGS)
    try:
        parts = [p for p in rel.split("/") if p]
        walked = ""
        for part in parts[:-1]:
            walked = f"{walked}/{part}" if walked else part
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                # O_NOFOLLOW | O_DIRECTORY on a symlink fails with ENOTDIR (or ELOOP)
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(part, fd):
                    raise _refuse(output, walked) from None
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    yield None
                    return
                raise
            os.close(fd)
            fd = nfd
        if not parts:
            yield Confined(f"/proc/self/fd/{fd}/.", stat.S_IFDIR)  # "." : not the link itself
            return
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            yield None
            return
        yield Confined(f"/proc/self/fd/{fd}/{parts[-1]}", st.st_mode)
    finally:
        os.close(fd)
