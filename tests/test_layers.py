"""The package's layers import one way only: castore <- build <- nix <- image <- plugin / cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pytest_ocibuild"
# What each layer may import from the package (besides itself and the base modules).
BASE = {"errors", "__init__"}
ALLOWED = {
    "castore": set(),
    "build": {"castore"},
    "nix": {"castore", "build"},
    "image": {"castore", "build", "nix"},
    "plugin": {"castore", "build", "nix", "image", "cli", "store_ops"},
}


def _layer(module: Path) -> str:
    rel = module.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text(), str(module))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pytest_ocibuild" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] in ("pytest", "_pytest", "syrupy", "xdist"):
                found.add("<pytest>")
    return found


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: str(m.relative_to(PKG)))
def test_module_imports_only_lower_layers(module: Path) -> None:
    layer = _layer(module)
    if layer not in ALLOWED:
        return  # top-level modules (cli, __main__, errors) may import any layer
    bad = _imports(module) - ALLOWED[layer] - BASE - {layer}
    if layer == "plugin":
        bad.discard("<pytest>")
    assert not bad, f"{module.relative_to(PKG)} ({layer}) imports {sorted(bad)}"


def test_only_plugin_imports_pytest() -> None:
    offenders = [
        str(m.relative_to(PKG)) for m in MODULES
        if "<pytest>" in _imports(m) and _layer(m) != "plugin"
    ]
    assert offenders == []
