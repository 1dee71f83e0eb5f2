"""Runtime: runs an OCI bundle. ``open_runtime`` picks the implementation."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a container ended: exit ``code`` (128+N for signal N), or ``timed_out``.

    ``limit``: a limit the runtime saw the build reach: ``silent-timeout`` (killed for it),
    ``out-of-memory`` (the kernel killed a process of it), ``too-many-processes`` (a fork
    was refused); None: none.
    """

    code: int
    timed_out: bool = False
    duration: float = 0.0
    limit: str | None = None


class Runtime(Protocol):
    """An OCI runtime able to run a bundle to completion."""

    name: str

    def unavailable_reason(self) -> str | None:
        """None if builds can run; otherwise one line saying why not and what to install."""
        ...

    def run(
        self, bundle: Path, container_id: str, *, log: Path, timeout: float | None,
        max_silent: float | None = None,
    ) -> ExitStatus:
        """Run the bundle's process; stdout and stderr are appended to ``log``; stdin /dev/null.

        ``max_silent``: kill it after that many seconds without output (``limit``
        ``silent-timeout``); ``timeout``: after that many seconds in all (``timed_out``).

        Which bytes came from which stream is appended to ``<log>.runs`` (build.logs).

        On timeout (or KeyboardInterrupt) the container is killed; in every case it is
        deleted before returning. Raises RuntimeUnavailable when the runtime cannot start
        containers at all (missing binary, kernel refuses namespaces).
        """
        ...

    def deferring_deletes(self) -> AbstractContextManager[None]:
        """A block within which ``run`` (in this thread) may return before the container is
        deleted (its process and output are complete); every container is deleted by the
        time the block is left, however it is left."""
        ...


def open_runtime(binary: str = "runc", *, state_dir: Path | None = None) -> Runtime:
    """A runc-compatible runtime using ``binary`` (name on PATH or a path)."""
    from pytest_ocibuild.build.runc import RuncRuntime

    return RuncRuntime(binary, state_dir=state_dir)
