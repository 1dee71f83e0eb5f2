"""``--version``, help text on every argument, plain top-level help."""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_ocibuild import __version__
from pytest_ocibuild.cli import _parser
from tests.cli.conftest import ocibuild


def _parsers(parser: argparse.ArgumentParser, prog: str = "ocibuild"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parsers(sub, f"{prog} {name}")
    return out


def test_every_argument_has_help() -> None:
    missing = [f"{prog}: {'/'.join(a.option_strings) or a.dest}"
               for prog, p in _parsers(_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


def test_version_and_plain_help(tmp_path: Path) -> None:
    res = ocibuild("--version", store=tmp_path / "s")
    assert res.returncode == 0 and res.stdout.strip() == f"ocibuild {__version__}"
    res = ocibuild("--help", store=tmp_path / "s")
    assert res.returncode == 0
    assert "``" not in res.stdout and "exit codes: 0 success" in res.stdout
    assert "nix-build" in res.stdout and "--version" in res.stdout


def test_cache_ls_says_when_empty(tmp_path: Path) -> None:
    res = ocibuild("cache", "ls", store=tmp_path / "s")
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr.strip() == f"no caches in {tmp_path / 's'}"
