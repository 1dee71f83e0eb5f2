"""Differential harness: build the corpus in ``nix/`` with the real nix-build and with
``ocibuild nix-build``, and describe both results in the same terms.

Our side is driven as a subprocess, exactly as a user runs it, and Nix's side only through its
own command-line tools. The comparison logic (running nix-build, tree diffs, failure reasons)
lives in ``pytest_ocibuild.plugin.nixdiff``, shared with the plugin's ``compare: nix``; it is
re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ocibuild.plugin.nixdiff import (  # noqa: F401 (re-exported for test_vs_nix)
    NIX_BUILD_OPTS,
    SRI,
    OutputInfo,
    Result,
    nix32_to_sri,
    nix_errors,
    nix_log_tail,
    nix_unusable,
    normalise_reason,
    reason_matches,
    run_nix_build,
    tree_diff,
)
from pytest_ocibuild.plugin.nixdiff import NixErrorLine as NixError  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
NIX_DIR = ROOT / "nix"
CORPUS = NIX_DIR / "default.nix"
# group (attribute of nix/default.nix) -> file defining its cases
GROUPS = {
    "trees": "trees.nix", "deps": "deps.nix", "fixed": "fixed.nix", "attrs": "attrs.nix",
    "sandbox": "sandbox.nix", "failures": "failures.nix", "ca": "ca.nix", "graph": "graph.nix",
}
CA_CONFIG = "experimental-features = nix-command ca-derivations"
TIMEOUT = 900
STORE_ENTRY = re.compile(r"^[0-9a-df-np-sv-z]{32}-")
# Readers-writer lock shared by every pytest process on the machine (xdist workers included):
# our builds hold it shared while /nix/store is watched, Nix builds hold it exclusively.
STORE_LOCK = Path("/tmp/ocibuild-nixdiff.lock")

needs_nix_build = pytest.mark.skipif(  # a normal user's Debian nix-bin cannot build
    shutil.which("nix-build") is None or nix_unusable() is not None,
    reason=nix_unusable() or "needs nix-build on PATH")


# --- the corpus ------------------------------------------------------------------------------

def corpus_cases() -> list[str]:
    """``group.case`` for every case, read from the files without Nix (two-space attributes of
    the body that follows the last line reading ``{`` or ``rec {``)."""
    cases = []
    for group, name in GROUPS.items():
        lines = (NIX_DIR / name).read_text().splitlines()
        start = max(i for i, line in enumerate(lines) if line in ("{", "rec {"))
        body = "\n".join(lines[start + 1:])
        cases += [f"{group}.{c}" for c in re.findall(r"^  ([a-z][a-z0-9-]*) = ", body, re.M)]
    return cases


def case_env(case: str) -> dict[str, str]:
    """The environment both builders run with (the same for both)."""
    env = dict(os.environ)
    env["NIX_REMOTE"] = ""
    env["OCIBUILD_CORPUS_IMPURE"] = "from-caller"  # see sandbox.fixed-output
    env.pop("OCIBUILD_CORPUS_UNSET", None)
    if case.startswith("ca."):
        env["NIX_CONFIG"] = CA_CONFIG
    return env


def evaluate_index(bbdir: Path) -> dict[str, tuple[str | None, str]]:
    """``group.case`` -> (the error regex of a case marked with ``lib.fails`` or None, the
    derivation's name), evaluated by Nix from the index itself."""
    expr = (f"let c = import {CORPUS} {{ bbdir = {bbdir}; }}; in builtins.mapAttrs (g: "
            "builtins.mapAttrs (n: d: [ (d.expectedError or null) d.name ])) c")
    out = _run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
               env=case_env("ca.index"), check=True).stdout
    return {f"{g}.{c}": (v[0], v[1]) for g, cs in json.loads(out).items()
            for c, v in cs.items()}


# --- running both sides ----------------------------------------------------------------------

def _run(cmd: list[str], *, env: dict[str, str], check: bool = False,
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          cwd=ROOT, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def nix_build(case: str, bbdir: Path, *extra: str) -> Result:
    """Build ``case`` with the real nix-build; describe its outputs with Nix's own tools.
    ``extra``: more arguments (``--argstr nonce X``)."""
    args = [str(CORPUS), "--arg", "bbdir", str(bbdir), "-A", case, *extra]
    return run_nix_build(args, env=case_env(case), cwd=ROOT, timeout=TIMEOUT)


def ocibuild_command() -> list[str]:
    """Our CLI: ``python -m pytest_ocibuild``, or ``$NIXDIFF_OCIBUILD`` (to check the harness
    against another implementation of the same contract)."""
    override = os.environ.get("NIXDIFF_OCIBUILD")
    return shlex.split(override) if override else [sys.executable, "-m", "pytest_ocibuild"]


def ocibuild_build(case: str, bbdir: Path, store: Path, export: Path, *extra: str) -> Result:
    """Build ``case`` with ``ocibuild nix-build --json --export``."""
    cmd = [*ocibuild_command(), "nix-build", "--store", str(store),
           "--json", "--export", str(export), str(CORPUS), "-A", case,
           "--arg", "bbdir", str(bbdir), *extra]
    proc = _run(cmd, env=case_env(case))
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode != 0:
        return res
    try:
        res.raw = doc = json.loads(proc.stdout)
        res.drv_path = doc["drvPath"]
        for name, o in doc["outputs"].items():
            res.outputs[name] = OutputInfo(o["path"], o["narHash"], o["narSize"],
                                           sorted(o["references"]))
    except (ValueError, KeyError, TypeError) as e:
        raise AssertionError(f"--json output breaks the contract ({e!r}):\n{proc.stdout}") from e
    return res


def store_listing() -> set[str]:
    """Entries of /nix/store (to show our builds never write there)."""
    return set(os.listdir("/nix/store"))


def store_changes(before: set[str], after: set[str], prefixes: set[str]) -> list[str]:
    """Store entries added or removed around one of our builds. Changes by Nix processes
    outside this harness are ignored as far as possible (:func:`store_lock` orders those inside
    it): only names starting with one of ``prefixes`` (the corpus's derivation and source
    names) count, and anything not named like a store path, but not a Nix build's transient
    ``<drv>.chroot``/``.lock`` (a nix-build of another test, e.g. a docs example, makes and
    removes them; ours never writes /nix/store at all)."""
    def ours(entry: str) -> bool:
        if entry.endswith((".drv.chroot", ".lock")):
            return False
        return not STORE_ENTRY.match(entry) or entry[33:].startswith(tuple(prefixes))

    added = sorted(e for e in after - before if ours(e))
    removed = sorted(e for e in before - after if ours(e))
    return [f"added /nix/store/{e}" for e in added] + [f"removed /nix/store/{e}" for e in removed]


@contextlib.contextmanager
def store_lock(exclusive: bool) -> Iterator[None]:
    """Hold :data:`STORE_LOCK` (exclusive for Nix, which writes /nix/store; shared for ours)."""
    with open(STORE_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- comparing -------------------------------------------------------------------------------

def exported(export: Path, name: str, path: str) -> Path | None:
    """Where ``--export`` put an output: under its store base name, its output name, or its
    full store path."""
    base = path.rsplit("/", 1)[1]
    for p in (export / base, export / name, export / path.lstrip("/")):
        if os.path.lexists(p):
            return p
    return None


def our_reason(stderr: str) -> str:
    """Our one-line reason: the last non-empty line of stderr, normalised."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    return normalise_reason(lines[-1]) if lines else ""


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def index(bbdir: Path) -> dict[str, tuple[str | None, str]]:
    """Every case's expected Nix error (None: must build) and derivation name."""
    return evaluate_index(bbdir)


@pytest.fixture(scope="session")
def corpus_prefixes(index: dict[str, tuple[str | None, str]]) -> set[str]:
    """Name prefixes of everything the corpus puts in a store (for :func:`store_changes`)."""
    return {name for _, name in index.values()} | {"graph-", "busybox-dir", "note.txt"}
