"""Slots: a concurrency limit shared by threads and processes (flock on N slot files)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Slots:
    """At most ``n`` holders at once across every process using the same ``directory``."""

    def __init__(self, directory: Path, n: int, *, poll: float = 0.05) -> None:
        if n < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.directory = directory
        self.n = n
        self.poll = poll
        self._local = threading.BoundedSemaphore(n)

    @contextmanager
    def acquire(self) -> Iterator[int]:
        """Hold one slot for the duration of the block; yields its index."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._local:
            while True:
                for i in range(self.n):
                    fd = os.open(self.directory / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    try:
                        yield i
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        os.close(fd)
                    return
                time.sleep(self.poll)
