"""Sandbox runtimes behind one small interface (``base``), one module per backend.

``open_runtime(name)`` is the one factory: ``runc`` (the default), ``crun``, ``runsc``
(gVisor), ``bwrap`` (bubblewrap, which runs the same bundle without an OCI runtime), ``fake``
(scripted outcomes, for unit tests of the executor only), or a path to a runc-compatible
binary.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_ocibuild.build.runtime.base import (
    ChoosesIds,
    DefersDeletes,
    ExitStatus,
    Purgeable,
    Runtime,
)
from pytest_ocibuild.errors import InvalidRequest

__all__ = ["RUNTIMES", "ChoosesIds", "DefersDeletes", "ExitStatus", "Purgeable", "Runtime",
           "open_runtime", "purgeable_runtimes"]

RUNTIMES = ("runc", "crun", "runsc", "bwrap")  # the real backends, for --runtime's help


def open_runtime(name: str = "runc", *, state_dir: Path | None = None) -> Runtime:
    """The backend called ``name`` (see the module docstring); a value with a ``/`` is a
    runc-compatible binary (its file name picks the backend when it is a known one).

    InvalidRequest names the choices for anything else.
    """
    base = os.path.basename(name)
    if name == "fake":
        from pytest_ocibuild.build.runtime.fake import FakeRuntime

        return FakeRuntime()
    if base == "bwrap":
        from pytest_ocibuild.build.runtime.bwrap import BwrapRuntime

        return BwrapRuntime(name)
    binary = name if "/" in name else None
    if base == "runc" or (binary and base not in RUNTIMES):
        from pytest_ocibuild.build.runtime.runc import RuncRuntime

        return RuncRuntime(binary or "runc", state_dir=state_dir)
    if base == "crun":
        from pytest_ocibuild.build.runtime.crun import CrunRuntime

        return CrunRuntime(binary, state_dir=state_dir)
    if base == "runsc":
        from pytest_ocibuild.build.runtime.runsc import RunscRuntime

        return RunscRuntime(binary, state_dir=state_dir)
    raise InvalidRequest(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)} "
                         "or the path of a runc-compatible binary")


def purgeable_runtimes() -> list[Purgeable]:
    """Each backend keeping a state dir that this user's runs made (``store purge`` looks
    through them all)."""
    from pytest_ocibuild.build.locations import user_dir

    found = []
    for name in RUNTIMES:
        state = user_dir() / name
        if state.is_dir() and isinstance(runtime := open_runtime(name, state_dir=state),
                                         Purgeable):
            found.append(runtime)
    return found
