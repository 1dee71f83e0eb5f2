"""InputProvider: makes castore input nodes visible, read-only, in a bundle's inputs directory."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from pytest_ocibuild.castore.nodes import Node
from pytest_ocibuild.castore.store import Store


class InputProvider(Protocol):
    """One way of serving inputs (FUSE mount, hardlinked materialization, ...)."""

    name: str

    def provide(
        self, store: Store, inputs: Mapping[str, Node], at: Path
    ) -> AbstractContextManager[None]:
        """Populate the existing empty directory ``at`` with ``inputs`` (name -> node).

        While the context is open, ``at/<name>`` is the node's tree: files 0444 (0555 when
        executable), directories 0555. On exit -- normal, exception or KeyboardInterrupt --
        everything is unmounted/removed so ``at`` is an empty directory again.
        Raises StoreError if an input is missing from the store.
        """
        ...


def open_input_provider(name: str) -> InputProvider:
    """``fuse`` or ``materialize``."""
    if name == "fuse":
        from pytest_ocibuild.build.fuse_inputs import FuseInputs

        return FuseInputs()
    if name == "materialize":
        from pytest_ocibuild.build.materialize import MaterializeInputs

        return MaterializeInputs()
    from pytest_ocibuild.errors import InvalidRequest

    raise InvalidRequest(f"unknown input provider {name!r} (choose 'fuse' or 'materialize')")
