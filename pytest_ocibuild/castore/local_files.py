"""The file-level helpers of LocalStore: digest-checking reads, presence, links, copies."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator

from pytest_ocibuild.castore.digest import EMPTY, Digest, hasher
from pytest_ocibuild.errors import StoreError

_HEX = frozenset("0123456789abcdef")


class VerifyingReader(io.RawIOBase):
    """A raw reader over a blob file that hashes everything read and checks it at EOF."""

    def __init__(self, f: io.FileIO, digest: Digest) -> None:
        self._f = f
        self._digest = digest
        self._hash = hasher()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(buf)
        if n:
            self._hash.update(memoryview(buf)[:n])
        elif not self._checked and len(buf):
            self._checked = True
            actual = Digest(self._hash.digest())
            if actual != self._digest:
                raise StoreError(
                    f"blob {self._digest.hex} is corrupt: its contents hash to {actual.hex}",
                    reason="corrupt",
                )
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def present(path: str, size: int | None, digest: Digest) -> bool:
    """Whether an object file at ``path`` can stand for ``digest`` (see ``has_blob``)."""
    try:
        actual = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if size is not None:
        return actual == size
    return actual > 0 or digest == EMPTY


def file_size(path: str) -> int:
    """Size of the file at ``path``, -1 if there is none."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


_ROOT_FD: list[int] = []


def link_into(src: str, target: str) -> None:
    """``linkat(src, target, AT_SYMLINK_FOLLOW)`` for an absolute ``src``.

    CPython only calls linkat (plain link would link the /proc magic link itself: EXDEV) when
    given a directory fd; the kernel ignores it for an absolute path, so one of ``/`` serves.
    """
    if not _ROOT_FD:  # a racing thread at worst opens a second one
        _ROOT_FD.append(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    os.link(src, target, src_dir_fd=_ROOT_FD[0])


def copy_fd(src: int, dst: int) -> None:
    """Copy all of ``src`` to ``dst`` inside the kernel."""
    offset = 0
    while n := os.sendfile(dst, src, offset, 1 << 30):
        offset += n


def iter_objects(base: str) -> Iterator[Digest]:
    for sub in sorted(os.listdir(base)):
        if len(sub) != 2 or not set(sub) <= _HEX:
            continue
        for name in os.listdir(os.path.join(base, sub)):
            if len(name) == 64 and name.startswith(sub) and set(name) <= _HEX:
                yield Digest.from_hex(name)


def unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
