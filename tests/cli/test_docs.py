"""Every ``sh`` block of the README and docs/ runs as written, in a fresh store.

A block runs as one bash script from the repository root (its lines may depend on each
other), with ``pipefail``, stopping at the first command that fails; ``| head`` may end a
command with 141, the documented status for a closed pipe. A block that cannot run in a test
is preceded in the doc by ``<!-- not run: REASON -->``; :data:`NOT_RUN` is that list, kept
short and checked here. The YAML, Nix, TOML and Python snippets users write as files are run
by tests/cli/test_doc_snippets.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.conftest import ROOT

DOCS = ["README.md", "docs/cli.md", "docs/store.md", "docs/plugin.md", "docs/nix.md",
        "docs/nix-cases.md", "docs/image.md", "docs/doctor.md", "docs/troubleshooting.md",
        "docs/nix-sandbox.md", "docs/runtimes.md", "docs/events.md"]
FENCE = re.compile(r"^(?:<!-- not run: (?P<why>.+?) -->\n)?```(?P<lang>\S*)\n(?P<body>.*?)^```$",
                   re.S | re.M)
# Blocks that do not run here, by doc and first line, with the reason the doc gives.
NOT_RUN = {
    ("README.md", "bash .ci/setup && .venv/bin/pytest cases/ -n auto"),
    ("README.md", "bash .ci/setup && .venv/bin/pytest -n auto tests cases"),
    ("README.md", ".venv/bin/pytest cases/ -n auto                 # all cases, in parallel, "
                  "one shared store"),
    ("docs/plugin.md", ".venv/bin/pytest cases/                 # the corpus"),
    ("docs/nix.md", ".venv/bin/pytest tests/nixdiff -n auto             # marker `nix`; "
                    "skipped without nix-build"),
    ("docs/nix.md", ".venv/bin/python -m tests.nixdiff.nixtests                   # fetch, "
                    "list the cases"),
}
# Shared paths of /tmp that examples write (/tmp/bb, /tmp/out, /tmp/oci): one block at a time.
TMP_LOCK = Path("/tmp/ocibuild-doc-examples.lock")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a doc."""

    doc: str
    line: int
    lang: str
    body: str
    not_run: str | None

    @property
    def first(self) -> str:
        return self.body.splitlines()[0] if self.body else ""


def blocks(doc: str, lang: str | None = None) -> list[Block]:
    """The fenced blocks of ``doc`` (relative to the repository), optionally of one language."""
    text = (ROOT / doc).read_text()
    found = [Block(doc, text.count("\n", 0, m.start("body")) + 1, m["lang"], m["body"], m["why"])
             for m in FENCE.finditer(text)]
    return [b for b in found if lang is None or b.lang == lang]


SH = [b for doc in DOCS for b in blocks(doc, "sh")]
RUN = [b for b in SH if b.not_run is None]


def _marks(block: Block) -> list[pytest.MarkDecorator]:
    nix = any(w in block.body for w in ("nix-build", "nix/default.nix", "tests/nixdiff"))
    return [pytest.mark.runc, *([pytest.mark.nix] if nix else [])]


def _script(body: str) -> str:
    """``body`` as a script that stops at the first failing command and names it."""
    out = ["set -o pipefail"]
    for command in re.sub(r"\\\n", " ", body).splitlines():
        if not command.strip() or command.lstrip().startswith("#"):
            continue
        ok = "0|141" if "| head" in command else "0"
        out += [command, f"rc=$?; case $rc in {ok}) ;; *) echo \"doc example failed (exit $rc):\" "
                         f"{shlex.quote(command)} >&2; exit 1;; esac"]
    return "\n".join(out) + "\n"


@contextmanager
def _tmp_lock(block: Block) -> Iterator[None]:
    if "/tmp/" not in block.body:
        yield
        return
    with TMP_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def example_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an example: a fresh store and per-user runtime directory."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "OCIBUILD_STORE": str(tmp_path / "store"), "XDG_RUNTIME_DIR": str(run)}
    for name in ("OCIBUILD_DEBUG", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                 "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    return env


def test_every_doc_with_examples_is_read() -> None:
    assert {b.doc for b in RUN} >= {"README.md", "docs/cli.md", "docs/store.md", "docs/nix.md",
                                    "docs/image.md", "docs/doctor.md"}
    assert len(RUN) >= 12
    unread = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} - set(DOCS)
    assert unread == {"docs/reaper.md"}, "add the new doc to DOCS"


def test_the_not_run_list_is_the_docs_own() -> None:
    skipped = {(b.doc, b.first) for b in SH if b.not_run}
    assert skipped == NOT_RUN, "a block was marked <!-- not run --> (or unmarked): update NOT_RUN"
    assert all(len(b.not_run or "") > 20 for b in SH if b.not_run)


def test_the_script_stops_at_a_failing_command(tmp_path: Path) -> None:
    script = _script("true | head -1\nfalse  # fails\ntouch never\n")
    res = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "doc example failed (exit 1): false  # fails" in res.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("block", [pytest.param(b, marks=_marks(b), id=f"{b.doc}:{b.line}")
                                   for b in RUN])
def test_sh_block_runs(block: Block, tmp_path: Path) -> None:
    with _tmp_lock(block):
        res = subprocess.run(["bash", "-c", _script(block.body)], cwd=ROOT,
                             env=example_env(tmp_path), capture_output=True, text=True,
                             timeout=300)
    assert res.returncode == 0, (block.doc, block.line, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr
