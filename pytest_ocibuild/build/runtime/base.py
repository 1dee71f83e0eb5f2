"""What a sandbox runtime is: one ``run``, plus what purge needs (OBuilder's SANDBOX)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pytest_ocibuild.build.ids import IdMaps

# ``run``'s ``on_output(stream, chunk)``: each chunk of output ("stdout"/"stderr") as written
OnOutput = Callable[[str, bytes], None]


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


@runtime_checkable
class Runtime(Protocol):
    """A sandbox able to run an OCI bundle (``config.json`` and its root) to completion."""

    name: str

    def unavailable_reason(self) -> str | None:
        """None if builds can run; otherwise one line saying why not and what to install."""
        ...

    def run(
        self, bundle: Path, container_id: str, *, log: Path, timeout: float | None,
        max_silent: float | None = None, on_output: OnOutput | None = None,
    ) -> ExitStatus:
        """Run the bundle's process; stdout and stderr are appended to ``log``; stdin /dev/null.

        ``max_silent``: kill it after that many seconds without output (``limit``
        ``silent-timeout``); ``timeout``: after that many seconds in all (``timed_out``).
        Which bytes came from which stream is appended to ``<log>.runs`` (build.logs).
        ``on_output``: called in this thread with each chunk as the build writes it (the
        chunks also go to ``log``), before ``run`` returns.

        On timeout (or KeyboardInterrupt) the container is killed; in every case it is
        deleted before returning. Raises RuntimeUnavailable when the runtime cannot start
        containers at all (missing binary, kernel refuses namespaces), BundleError when it
        rejects the bundle.
        """
        ...


@runtime_checkable
class Purgeable(Protocol):
    """A runtime keeping containers in a state directory, which a crashed run may leave."""

    state_dir: Path

    def list(self) -> list[str]:
        """Ids of the containers in ``state_dir``."""
        ...

    def purge(self, prefix: str) -> list[str]:
        """Kill and delete every container whose id starts with ``prefix``; their ids."""
        ...


@runtime_checkable
class DefersDeletes(Protocol):
    """A runtime whose container deletion can overlap the caller's own work."""

    def deferring_deletes(self) -> AbstractContextManager[None]:
        """A block within which ``run`` (in this thread) may return before the container is
        deleted (its process and output are complete); every container is deleted by the
        time the block is left, however it is left."""
        ...


@runtime_checkable
class ChoosesIds(Protocol):
    """A runtime that needs builds to run as particular host ids (bwrap as a normal user
    can map only the caller)."""

    def id_maps(self) -> IdMaps | None:
        """The maps every build must use, or None: the executor's own (per build slot)."""
        ...
