"""Progress lines for long builds: one thread per process reports every running build."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Running:
    label: str
    log: Path
    start: float
    beats: int = 0  # progress lines said so far


class Heartbeat:
    """Says ``say(line)`` every ``interval`` seconds for each build still running.

    Builds are announced with ``watch``; a build that ends before its first interval costs
    no thread and prints nothing. The one reporting thread starts with the first build.
    """

    def __init__(self, interval: float, say: Callable[[str], None]) -> None:
        self.interval = interval
        self.say = say
        self._running: dict[int, _Running] = {}
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, label: str, log: Path) -> Iterator[None]:
        """Report ``label`` (with the last line of ``log``) while the block runs."""
        if not self.interval:
            yield
            return
        token = next(self._ids)
        with self._wake:
            self._running[token] = _Running(label, log, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ocibuild-heartbeat",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                del self._running[token]

    def _loop(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [r for r in self._running.values()
                       if now >= r.start + (r.beats + 1) * self.interval]
                for r in due:
                    r.beats += 1
                waits = [r.start + (r.beats + 1) * self.interval - now
                         for r in self._running.values()]
                lines = [(r.label, r.log, now - r.start) for r in due]
            for label, log, elapsed in lines:
                last = last_line(log)
                self.say(f"[ocibuild] {label}: building for {elapsed:.0f}s"
                         + (f"; last log line: {last}" if last else f"; log: {log}"))
            with self._wake:
                if not lines:
                    self._wake.wait(min(waits) if waits else None)


def last_line(log: Path, limit: int = 160) -> str:
    """The last line of ``log`` (at most ``limit`` characters; "" if none)."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""
