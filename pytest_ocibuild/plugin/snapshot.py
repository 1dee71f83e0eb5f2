"""Spec goldens through syrupy: one JSON file per case, ``<dir>/__snapshots__/<file>/<case>.json``.

``SpecSnapshotExtension`` is syrupy's JSON single-file extension with stable formatting.
``CaseLocation`` tells syrupy where a YAML case lives (syrupy's own location expects a Python
function). ``check_spec`` runs one assertion through syrupy's session, so the usual
``--snapshot-update`` and the snapshot summary at the end of the run apply to cases too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.exceptions import SnapshotDoesNotExist
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation
from syrupy.terminal import disable_color


class SpecSnapshotExtension(JSONSnapshotExtension):
    """JSON goldens: 2-space indent, keys in the spec's own order, trailing newline."""

    def serialize(self, data: Any, **_: Any) -> str:
        """Serialize like ``json.dumps`` (key order kept: it follows the OCI spec's layout)."""
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


class CaseLocation(PyTestLocation):
    """A syrupy test location for a YAML case item (named after the case)."""

    def __post_init__(self) -> None:
        item = self.item
        object.__setattr__(self, "filepath", str(item.path.absolute()))
        object.__setattr__(self, "modulename", item.path.stem)
        object.__setattr__(self, "methodname", item.name)
        object.__setattr__(self, "nodename", item.name)
        object.__setattr__(self, "testname", item.name)


@dataclass(frozen=True, slots=True)
class SpecMismatch:
    """The golden is missing (``diff`` empty) or differs (``diff``: ``-`` golden, ``+`` new)."""

    location: str
    missing: bool
    diff: list[str]


def check_spec(item: pytest.Item, spec: dict[str, Any]) -> SpecMismatch | None:
    """Compare ``spec`` with the item's golden; None if it matches (or was just written).

    Raises RuntimeError if syrupy is not active.
    """
    session = getattr(item.config, "_syrupy", None)
    if session is None:
        raise RuntimeError("syrupy is disabled (-p no:syrupy): spec goldens cannot be checked")
    option = item.config.option
    assertion = SnapshotAssertion(
        session=session,
        extension_class=SpecSnapshotExtension,
        test_location=CaseLocation(item),
        update_snapshots=bool(option.update_snapshots),
        update_new_snapshots_only=bool(getattr(option, "update_new_snapshots_only", False)),
    )
    if assertion == spec:
        return None
    result = assertion.executions[assertion.num_executions - 1]
    if result.exception is not None and not isinstance(result.exception, SnapshotDoesNotExist):
        raise result.exception
    if result.recalled_data is None:
        return SpecMismatch(result.snapshot_location, True, [])
    with disable_color():
        diff = assertion.get_assert_diff()
    return SpecMismatch(result.snapshot_location, False, diff)
