"""Best-effort allocator hint: ask the filesystem to spread a directory's subdirectories.

``mark_topdir`` sets ``FS_TOPDIR_FL`` (``chattr +T``): ext2/3/4's Orlov allocator then places
each new subdirectory, and so the inodes of the files created in it, in a lightly used block
group instead of next to the parent. A fresh store's ``tmp/`` and blob shards thus avoid
groups crowded with other programs' files (on a journal-less ext4 every inode allocation scans
past recently deleted inodes of its group, which made ingesting into ``/tmp`` several times
slower). Other filesystems ignore or refuse the flag; nothing depends on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def mark_topdir(path: str) -> bool:
    """Set ``FS_TOPDIR_FL`` on the directory ``path``; False if the filesystem refuses."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with contextlib.suppress(OSError):
            (flags,) = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 4))
            if not flags & _FS_TOPDIR_FL:
                fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
            return True
        return False
    finally:
        os.close(fd)
