"""Spec goldens through syrupy: one JSON file per case, ``<dir>/__snapshots__/<file>/<case>.json``.

``SpecSnapshotExtension`` is syrupy's JSON single-file extension with stable formatting.
``CaseLocation`` tells syrupy where a YAML case lives (syrupy's own location expects a Python
function). ``check_spec`` runs one assertion through syrupy's session, so the usual
``--snapshot-update`` and the snapshot summary at the end of the run apply to cases too.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.data import SnapshotCollections
from syrupy.exceptions import SnapshotDoesNotExist
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation

from pytest_ocibuild.plugin import pretty
from pytest_ocibuild.plugin.schema import YamlError, load_yaml


class SpecSnapshotExtension(JSONSnapshotExtension):
    """JSON goldens: 2-space indent, keys in the spec's own order, trailing newline.

    Only orphaned goldens (whose case is gone from its YAML file) are reported to syrupy's
    unused-snapshot logic. syrupy decides "unused" from the Python functions it collected,
    so it would otherwise count every golden of a case that was merely deselected (``-k``)
    as unused, and delete it under ``--snapshot-update``.
    """

    def serialize(self, data: Any, **_: Any) -> str:
        """Serialize like ``json.dumps`` (key order kept: it follows the OCI spec's layout)."""
        return pretty.dumps(data) + "\n"

    def discover_snapshots(self, **kwargs: Any) -> SnapshotCollections:
        """The goldens below the snapshot directory whose case no longer exists."""
        orphans = SnapshotCollections()
        for collection in super().discover_snapshots(**kwargs):
            if is_orphan(Path(collection.location)):
                orphans.add(collection)
        return orphans


def is_orphan(golden: Path) -> bool:
    """True if ``<dir>/__snapshots__/<file>/<case>.json`` has no ``<case>`` in ``<dir>/<file>``.

    A YAML file that cannot be read or parsed keeps its goldens (it is reported elsewhere).
    """
    base = golden.parent.parent.parent / golden.parent.name
    for suffix in (".yaml", ".yml"):
        source = base.with_name(base.name + suffix)
        try:
            st = os.stat(source)
        except OSError:
            continue
        names = _case_names(str(source), st.st_mtime_ns, st.st_size)
        return names is not None and golden.stem not in names
    return True


_NAMES: dict[tuple[str, int, int], frozenset[str] | None] = {}


def _case_names(source: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    """The top-level keys of a YAML file (None: unreadable), parsed once per file version."""
    key = (source, mtime_ns, size)
    if key not in _NAMES:
        try:
            data, _ = load_yaml(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, YamlError):
            _NAMES[key] = None
        else:
            _NAMES[key] = frozenset(data) if isinstance(data, dict) else frozenset()
    return _NAMES[key]


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
    generated = SpecSnapshotExtension().serialize(spec)
    return SpecMismatch(result.snapshot_location, False,
                        spec_diff(str(result.recalled_data), generated))


def spec_diff(golden: str, generated: str, context: int = 3) -> list[str]:
    """Only what changed (with ``context`` lines around), ``-`` golden and ``+`` generated;
    hunks are headed by their line numbers. (syrupy's own diff also lists unchanged closing
    brackets as changed.)"""
    lines = difflib.unified_diff(golden.splitlines(), generated.splitlines(), lineterm="",
                                 n=context)
    return [line for line in lines if not line.startswith(("---", "+++"))]
