"""What a Nix build in pytest is about: the target, our result, the comparison with Nix's."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ocibuild.errors import OcibuildError
from pytest_ocibuild.plugin.nixdiff import Result

if TYPE_CHECKING:
    from pytest_ocibuild.castore.nodes import Node
    from pytest_ocibuild.castore.store import Store
    from pytest_ocibuild.nix.closure import PathInfo
    from pytest_ocibuild.plugin.case import Entry

RULE = "-" * 8


@dataclass(frozen=True, slots=True)
class NixTarget:
    """What to build: ``file`` (with ``attr``, ``--arg``s and ``--argstr``s) or a ``.drv``."""

    file: Path | None = None
    attr: str | None = None
    args: Mapping[str, str] = field(default_factory=dict)  # name → Nix expression
    argstrs: Mapping[str, str] = field(default_factory=dict)  # name → string
    drv: str | None = None

    def argv(self) -> list[str]:
        """The target as ``nix-build`` arguments."""
        if self.drv is not None:
            return [self.drv]
        argv = [str(self.file)]
        if self.attr:
            argv += ["-A", self.attr]
        for n, e in self.args.items():
            argv += ["--arg", n, e]
        for n, s in self.argstrs.items():
            argv += ["--argstr", n, s]
        return argv

    def describe(self, root: Path | None = None) -> str:
        """``nix/default.nix -A deps.a`` (the file relative to ``root`` when inside it)."""
        if self.drv is not None:
            return self.drv
        file = str(self.file)
        if root is not None and self.file is not None:
            with contextlib.suppress(ValueError):
                file = self.file.relative_to(root).as_posix()
        return f"{file} -A {self.attr}" if self.attr else file


@dataclass
class NixBuildResult:
    """Our build of a derivation: its outputs by name, each a registered store path."""

    drv_path: str
    outputs: dict[str, PathInfo]
    store: Store

    def path(self, output: str = "out") -> str:
        """The store path of ``output``."""
        return self._info(output).path

    def references(self, output: str = "out") -> tuple[str, ...]:
        """The store paths ``output`` refers to, sorted (itself included if it does)."""
        return self._info(output).references

    def nar_hash(self, output: str = "out") -> str:
        """The NAR hash of ``output`` in SRI form."""
        return self._info(output).nar_hash.sri

    def node(self, output: str = "out") -> Node:
        """The castore node of ``output``."""
        return self._info(output).node

    def entries(self, output: str = "out") -> dict[str, Entry]:
        """``output`` as ``{path: Entry}`` (``"."`` is the root when it is not a directory)."""
        from pytest_ocibuild.plugin.trees import actual_tree

        return actual_tree(self.store, self.node(output), contents=1 << 20)

    def tree(self, output: str = "out") -> dict[str, Any]:
        """``output`` in case notation, ready to compare with a dict literal."""
        from pytest_ocibuild.plugin.trees import to_notation

        return to_notation(self.entries(output))

    def read(self, output: str = "out", path: str = ".") -> bytes:
        """The bytes of one file in ``output`` (``"."``: the output itself)."""
        entry = self.entries(output).get(path)
        if entry is None or entry.kind != "file" or entry.contents is None:
            raise FileNotFoundError(f"{output}: {path}: not a file (or larger than 1 MiB)")
        return entry.contents

    def export(self, output: str, dest: Path) -> Path:
        """Write ``output`` to ``dest`` (which must not exist) as files."""
        from pytest_ocibuild.castore.trees import export

        export(self.store, self.node(output), dest)
        return dest

    def _info(self, output: str) -> PathInfo:
        try:
            return self.outputs[output]
        except KeyError:
            raise KeyError(f"{output!r} is not an output of {self.drv_path} "
                           f"({sorted(self.outputs)})") from None


@dataclass
class NixComparison:
    """Our build against nix-build's: ``differences`` is empty when they agree."""

    target: NixTarget
    ours: NixBuildResult | OcibuildError
    nix: Result
    differences: list[str]

    @property
    def agree(self) -> bool:
        return not self.differences

    def report(self, root: Path | None = None) -> str:
        """The readable difference report (``""`` when they agree)."""
        if self.agree:
            return ""
        return "\n".join([f"{RULE} ours vs nix-build: {self.target.describe(root)} {RULE}",
                          *self.differences])
