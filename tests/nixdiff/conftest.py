"""Differential harness: build the corpus in ``nix/`` with the real nix-build and with
``ocibuild nix-build``, and describe both results in the same terms.

Nothing here imports ``pytest_ocibuild``: our side is driven as a subprocess, exactly as a user
runs it, and Nix's side only through its own command-line tools.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NIX_DIR = ROOT / "nix"
CORPUS = NIX_DIR / "default.nix"
# group (attribute of nix/default.nix) -> file defining its cases
GROUPS = {
    "trees": "trees.nix", "deps": "deps.nix", "fixed": "fixed.nix", "attrs": "attrs.nix",
    "sandbox": "sandbox.nix", "failures": "failures.nix", "ca": "ca.nix", "graph": "graph.nix",
}
NIX_BUILD_OPTS = ("--option", "sandbox", "true", "--option", "substituters", "")
CA_CONFIG = "experimental-features = nix-command ca-derivations"
TIMEOUT = 900
STORE_ENTRY = re.compile(r"^[0-9a-df-np-sv-z]{32}-")
SRI = re.compile(r"^(md5|sha1|sha256|sha512)-[A-Za-z0-9+/]+=*$")
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
# Readers-writer lock shared by every pytest process on the machine (xdist workers included):
# our builds hold it shared while /nix/store is watched, Nix builds hold it exclusively.
STORE_LOCK = Path("/tmp/ocibuild-nixdiff.lock")

needs_nix_build = pytest.mark.skipif(shutil.which("nix-build") is None,
                                     reason="needs nix-build on PATH")


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

@dataclass
class OutputInfo:
    """One output as both sides describe it."""

    path: str
    nar_hash: str
    nar_size: int
    references: list[str]


@dataclass
class Result:
    """One build: exit status, logs and, on success, its outputs by name."""

    rc: int
    stdout: str
    stderr: str
    drv_path: str | None = None
    outputs: dict[str, OutputInfo] = field(default_factory=dict)
    raw: object = None


def _run(cmd: list[str], *, env: dict[str, str], check: bool = False,
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          cwd=ROOT, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def nix32_to_sri(text: str) -> str:
    """``sha256:<nixbase32>`` (nix-store --query --hash) to ``sha256-<base64>``; SRI passes."""
    if SRI.match(text):
        return text
    algo, _, body = text.partition(":")
    size = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}[algo]
    out = bytearray(size)
    for n, ch in enumerate(reversed(body)):
        digit = NIX32.index(ch)
        b, j = divmod(n * 5, 8)
        out[b] |= (digit << j) & 0xFF
        if b + 1 < size:
            out[b + 1] |= digit >> (8 - j)
    return f"{algo}-{base64.b64encode(bytes(out)).decode()}"


def _output_name(drv_path: str, path: str, names: list[str]) -> str:
    drv_name = drv_path.rsplit("/", 1)[1][33:-4]
    stem = path.rsplit("/", 1)[1][33:]
    for n in names:
        if stem == (drv_name if n == "out" else f"{drv_name}-{n}"):
            return n
    raise AssertionError(f"cannot tell which output of {drv_path} {path} is")


def nix_build(case: str, bbdir: Path, *extra: str) -> Result:
    """Build ``case`` with the real nix-build; describe its outputs with Nix's own tools.
    ``extra``: more arguments (``--argstr nonce X``)."""
    env = case_env(case)
    args = [str(CORPUS), "--arg", "bbdir", str(bbdir), "-A", case, *extra]
    proc = _run(["nix-build", "--no-out-link", *NIX_BUILD_OPTS, *args], env=env)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode != 0:
        return res
    res.drv_path = _run(["nix-instantiate", *args], env=env, check=True).stdout.strip()
    shown = json.loads(_run(["nix", "--extra-experimental-features", "nix-command",
                             "show-derivation", res.drv_path], env=env, check=True).stdout)
    names = sorted(shown[res.drv_path]["outputs"])
    # realising an already built derivation prints every output path (floating CA included)
    paths = _run(["nix-store", "--realise", *NIX_BUILD_OPTS, res.drv_path], env=env,
                 check=True).stdout.split()
    infos = json.loads(_run(["nix", "--extra-experimental-features", "nix-command",
                             "path-info", "--json", *paths], env=env, check=True).stdout)
    for info in infos:
        name = _output_name(res.drv_path, info["path"], names)
        res.outputs[name] = OutputInfo(info["path"], nix32_to_sri(info["narHash"]),
                                       info["narSize"], sorted(info["references"]))
    assert sorted(res.outputs) == names, f"nix-store --realise printed {paths}"
    return res


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
    names) count, and anything not named like a store path."""
    def ours(entry: str) -> bool:
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

def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISREG(st.st_mode):
        return "executable" if st.st_mode & stat.S_IXUSR else "file"  # as in a NAR
    return f"special({stat.S_IFMT(st.st_mode):o})"


def _digest(p: bytes) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _text_diff(ours: bytes, nix: bytes, rel: str) -> list[str]:
    a, b = (Path(os.fsdecode(p)).read_bytes().decode(errors="replace").splitlines()
            for p in (ours, nix))
    diff = list(difflib.unified_diff(b, a, f"nix/{rel}", f"ours/{rel}", lineterm="", n=1))
    return [f"    {line}" for line in diff[:40]] + (["    …"] if len(diff) > 40 else [])


def tree_diff(ours: Path | bytes, nix: Path | bytes, rel: str = ".") -> list[str]:
    """Differences between two file trees (types, executable bits, contents, symlink targets,
    names), ``nix`` being the reference; text files get a unified diff."""
    o, n = os.fsencode(ours), os.fsencode(nix)
    so, sn = os.lstat(o), os.lstat(n)
    ko, kn = _kind(so), _kind(sn)
    if ko != kn:
        return [f"{rel}: {ko} in ours, {kn} in nix"]
    if ko == "symlink":
        to, tn = os.readlink(o), os.readlink(n)
        if to == tn:
            return []
        return [f"{rel}: symlink to {os.fsdecode(to)!r} in ours, {os.fsdecode(tn)!r} in nix"]
    if ko in ("file", "executable"):
        if so.st_size == sn.st_size and _digest(o) == _digest(n):
            return []
        msg = [f"{rel}: contents differ ({so.st_size} bytes in ours, {sn.st_size} in nix)"]
        if max(so.st_size, sn.st_size) < 1 << 16:
            msg += _text_diff(o, n, rel)
        return msg
    if ko != "directory":
        return [f"{rel}: unexpected {ko}"]
    lo, ln = set(os.listdir(o)), set(os.listdir(n))
    out = [f"{rel}/{os.fsdecode(e)!r}: only in ours" for e in sorted(lo - ln)]
    out += [f"{rel}/{os.fsdecode(e)!r}: only in nix" for e in sorted(ln - lo)]
    for e in sorted(lo & ln):
        out += tree_diff(o + b"/" + e, n + b"/" + e, f"{rel}/{os.fsdecode(e)}")
    return out


def exported(export: Path, name: str, path: str) -> Path | None:
    """Where ``--export`` put an output: under its store base name, its output name, or its
    full store path."""
    base = path.rsplit("/", 1)[1]
    for p in (export / base, export / name, export / path.lstrip("/")):
        if os.path.lexists(p):
            return p
    return None


_PREFIX = re.compile(r"^(ocibuild: )?error: ")
_CHROOT = re.compile(r"/nix/store/[0-9a-z]{32}-[^/' ]*\.drv\.chroot(?=/)")
_AT = re.compile(r" at '[^']*'$")
_TOKEN = re.compile(r"/nix/store/[0-9a-z]{32}-[^\s':]+|(?:md5|sha1|sha256|sha512)-[A-Za-z0-9+/]+=*")


def normalise_reason(line: str) -> str:
    """An error line without its ``error:`` prefix, chroot path prefixes and the trailing
    `` at '<path>'`` of missing-output messages."""
    return _AT.sub("", _CHROOT.sub("", _PREFIX.sub("", line.strip())))


@dataclass
class NixError:
    """One ``error:`` block of nix-build's stderr."""

    first: str
    tokens: list[str]


def nix_errors(stderr: str) -> list[NixError]:
    """The ``error:`` blocks of nix-build's stderr (first line plus store paths and hashes of
    the indented continuation lines)."""
    blocks: list[NixError] = []
    for line in stderr.splitlines():
        if line.startswith("error: "):
            blocks.append(NixError(normalise_reason(line), []))
        elif blocks and line.startswith("  "):
            blocks[-1].tokens += _TOKEN.findall(line)
    return blocks


def nix_log_tail(stderr: str) -> str | None:
    """The last printable builder log line nix-build echoed before its first error."""
    lines = stderr.split("\nerror: ", 1)[0].splitlines()
    log = [x for x in lines if x.strip() and x.isprintable() and not x.startswith(
        ("building '", "these ", "this derivation", "  /nix/store/"))]
    return log[-1] if log else None


def our_reason(stderr: str) -> str:
    """Our one-line reason: the last non-empty line of stderr, normalised."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    return normalise_reason(lines[-1]) if lines else ""


def reason_matches(ours: str, nix: NixError, our_stderr: str) -> bool:
    """Ours gives Nix's reason: the same line, or, when Nix adds indented detail lines, a line
    starting with Nix's first line and every path and hash of the detail somewhere in stderr."""
    if not nix.tokens:
        return ours == nix.first
    return ours.startswith(nix.first.rstrip(":")) and all(t in our_stderr for t in nix.tokens)


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bbdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only a copy of the static /bin/busybox (``--arg bbdir``)."""
    src = Path("/bin/busybox")
    if not src.exists():
        pytest.skip("needs /bin/busybox")
    d = tmp_path_factory.mktemp("bb") / "busybox-dir"
    d.mkdir()
    shutil.copy2(src, d / "busybox")
    return d


@pytest.fixture(scope="session")
def index(bbdir: Path) -> dict[str, tuple[str | None, str]]:
    """Every case's expected Nix error (None: must build) and derivation name."""
    return evaluate_index(bbdir)


@pytest.fixture(scope="session")
def corpus_prefixes(index: dict[str, tuple[str | None, str]]) -> set[str]:
    """Name prefixes of everything the corpus puts in a store (for :func:`store_changes`)."""
    return {name for _, name in index.values()} | {"graph-", "busybox-dir", "note.txt"}
