"""Comparing a build of ours with the real ``nix-build``: run Nix, describe both results in the
same terms, and list every difference in a readable form.

Used by Nix cases with ``compare: nix``, by the ``nix_build`` fixture and by the differential
harness in tests/nixdiff. Nix's side is driven only through its own command-line tools; this
module imports nothing else of the package, so it stays cheap to import.

A difference report lists, per output, the store path, NAR hash, NAR size and references that
disagree, then a file-level diff of the two trees (type, executable bit, contents with a
unified diff of small text files, symlink targets, names present on one side only). Building
on one side and failing on the other is a difference; when both fail, their reasons must agree.
"""

from __future__ import annotations

import base64
import difflib
import functools
import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NIX_BUILD_OPTS = ("--option", "sandbox", "true", "--option", "substituters", "")
NIX_COMMAND = ("nix", "--extra-experimental-features", "nix-command")
SRI = re.compile(r"^(md5|sha1|sha256|sha512)-[A-Za-z0-9+/]+=*$")
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_PATH = re.compile(r"^/nix/store/[0-9a-df-np-sv-z]{32}-")


# --- one side's result -------------------------------------------------------------------------

@dataclass
class OutputInfo:
    """One output as both sides describe it (``nar_hash`` in SRI form, references sorted)."""

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


def store_name(path: str) -> str:
    """A store path's name: ``/nix/store/<hash>-dep-b`` → ``dep-b`` (other text unchanged)."""
    return path[len("/nix/store/") + 33:] if STORE_PATH.match(path) else path


def _run(cmd: Sequence[str], *, env: Mapping[str, str] | None, cwd: Path | str | None,
         timeout: float | None, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, errors="replace",
                          env=dict(env) if env is not None else None, cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def nix_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Nix's tools run with here: the local store (``NIX_REMOTE=``)."""
    env = dict(os.environ)
    env["NIX_REMOTE"] = ""
    env.update(extra or {})
    return env


def output_name(drv_path: str, path: str, names: Sequence[str]) -> str:
    """Which output of ``drv_path`` the store path ``path`` is."""
    drv_name = drv_path.rsplit("/", 1)[1][33:-4]
    stem = path.rsplit("/", 1)[1][33:]
    for n in names:
        if stem == (drv_name if n == "out" else f"{drv_name}-{n}"):
            return n
    raise AssertionError(f"cannot tell which output of {drv_path} {path} is")


@functools.cache
def nix_unusable() -> str | None:
    """Why the real Nix cannot build for this (non-root) user, or None; probed once per
    process with ``nix-instantiate --eval -E 1`` (as root: None, unprobed). Debian's
    single-user ``nix-bin`` run by a normal user fails every command with "could not set
    permissions on '/nix/var/nix/profiles/per-user'": there is no comparison to make then."""
    if os.geteuid() == 0:
        return None
    try:
        proc = _run(["nix-instantiate", "--eval", "-E", "1"], env=nix_env(), cwd=None,
                    timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the real Nix cannot run here ({e})"
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    why = next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines else "")
    return (f"comparison with nix-build skipped: the real Nix cannot build as uid "
            f"{os.geteuid()} ({why.removeprefix('error:').strip() or 'no message'})")


def skip_if_nix_unusable() -> None:
    """``pytest.skip`` with ``nix_unusable()``'s reason if there is one (one reason, one line
    of pytest's summary however many comparisons it stops)."""
    reason = nix_unusable()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def run_nix_build(target: Sequence[str], *, env: Mapping[str, str] | None = None,
                  cwd: Path | str | None = None, timeout: float | None = 900) -> Result:
    """Build with the real ``nix-build`` in Nix's sandbox and describe its outputs with Nix's
    own tools. ``target``: ``FILE [-A ATTR] [--arg N E]... [--argstr N S]...`` or a ``.drv``.
    Skips the calling test when the real Nix cannot build for this user (``nix_unusable``)."""
    skip_if_nix_unusable()
    env = nix_env() if env is None else env
    args = list(target)
    proc = _run(["nix-build", "--no-out-link", *NIX_BUILD_OPTS, *args], env=env, cwd=cwd,
                timeout=timeout)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode != 0:
        return res
    if len(args) == 1 and args[0].endswith(".drv"):
        res.drv_path = args[0]
    else:
        res.drv_path = _run(["nix-instantiate", *args], env=env, cwd=cwd, timeout=timeout,
                            check=True).stdout.strip().split("!", 1)[0]
    shown = json.loads(_run([*NIX_COMMAND, "show-derivation", res.drv_path], env=env, cwd=cwd,
                            timeout=timeout, check=True).stdout)
    names = sorted(shown[res.drv_path]["outputs"])
    # realising an already built derivation prints every output path (floating CA included)
    paths = _run(["nix-store", "--realise", *NIX_BUILD_OPTS, res.drv_path], env=env, cwd=cwd,
                 timeout=timeout, check=True).stdout.split()
    infos = json.loads(_run([*NIX_COMMAND, "path-info", "--json", *paths], env=env, cwd=cwd,
                            timeout=timeout, check=True).stdout)
    for info in infos:
        name = output_name(res.drv_path, info["path"], names)
        res.outputs[name] = OutputInfo(info["path"], nix32_to_sri(info["narHash"]),
                                       info["narSize"], sorted(info["references"]))
    if sorted(res.outputs) != names:
        raise AssertionError(f"nix-store --realise printed {paths}, expected outputs {names}")
    return res


# --- file trees ----------------------------------------------------------------------------

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


# --- failure reasons -----------------------------------------------------------------------

_PREFIX = re.compile(r"^(ocibuild: )?error: ")
_CHROOT = re.compile(r"/nix/store/[0-9a-z]{32}-[^/' ]*\.drv\.chroot(?=/)")
_AT = re.compile(r" at '[^']*'$")
_TOKEN = re.compile(r"/nix/store/[0-9a-z]{32}-[^\s':]+|(?:md5|sha1|sha256|sha512)-[A-Za-z0-9+/]+=*")


def normalise_reason(line: str) -> str:
    """An error line without its ``error:`` prefix, chroot path prefixes and the trailing
    `` at '<path>'`` of missing-output messages."""
    return _AT.sub("", _CHROOT.sub("", _PREFIX.sub("", line.strip())))


@dataclass
class NixErrorLine:
    """One ``error:`` block of nix-build's stderr: its first line and the store paths and
    hashes of its indented continuation lines."""

    first: str
    tokens: list[str]


def nix_errors(stderr: str) -> list[NixErrorLine]:
    """The ``error:`` blocks of nix-build's stderr."""
    blocks: list[NixErrorLine] = []
    for line in stderr.splitlines():
        if line.startswith("error: "):
            blocks.append(NixErrorLine(normalise_reason(line), []))
        elif blocks and line.startswith("  "):
            blocks[-1].tokens += _TOKEN.findall(line)
    return blocks


def nix_log_tail(stderr: str) -> str | None:
    """The last printable builder log line nix-build echoed before its first error."""
    lines = stderr.split("\nerror: ", 1)[0].splitlines()
    log = [x for x in lines if x.strip() and x.isprintable() and not x.startswith(
        ("building '", "these ", "this derivation", "  /nix/store/"))]
    return log[-1] if log else None


def reason_matches(ours: str, nix: NixErrorLine, our_text: str) -> bool:
    """Ours gives Nix's reason: the same line, or, when Nix adds indented detail lines, a line
    starting with Nix's first line and every path and hash of the detail in ``our_text``."""
    if not nix.tokens:
        return ours == nix.first
    return ours.startswith(nix.first.rstrip(":")) and all(t in our_text for t in nix.tokens)


# --- comparing two results -----------------------------------------------------------------

@dataclass
class Side:
    """One side of a comparison: outputs (and where their files are), or the failure."""

    outputs: dict[str, OutputInfo] = field(default_factory=dict)
    trees: dict[str, Path] = field(default_factory=dict)  # output → its files on disk
    drv_path: str | None = None
    error: str | None = None  # the failure's one-line reason (None: it built)
    detail: str = ""  # more text to find Nix's detail tokens in (log tail, ...)


def nix_side(res: Result) -> Side:
    """A nix-build result as a Side (its trees are the store paths themselves)."""
    if res.rc != 0:
        errors = nix_errors(res.stderr)
        first = errors[0].first if errors else normalise_reason(
            ([x for x in res.stderr.splitlines() if x.strip()] or ["failed"])[-1])
        return Side(error=first, detail=res.stderr)
    return Side(outputs=dict(res.outputs), drv_path=res.drv_path,
                trees={o: Path(i.path) for o, i in res.outputs.items()})


def compare(ours: Side, nix: Side, *, nix_stderr: str = "") -> list[str]:
    """Every difference between our build and Nix's, as report lines (empty: they agree)."""
    if nix.error is not None or ours.error is not None:
        if nix.error is None:
            return [f"ours failed, nix-build built it: {ours.error}"]
        if ours.error is None:
            return [f"ours built it, nix-build failed: {nix.error}"]
        mine = normalise_reason(ours.error)
        errors = nix_errors(nix_stderr) or [NixErrorLine(nix.error, [])]
        if any(reason_matches(mine, e, f"{ours.error}\n{ours.detail}") for e in errors):
            return []
        return ["both failed, for different reasons:", f"  ours: {mine}",
                f"  nix:  {errors[0].first}"]
    lines: list[str] = []
    if ours.drv_path and nix.drv_path and ours.drv_path != nix.drv_path:
        lines += [f"drvPath: ours {ours.drv_path}", f"         nix  {nix.drv_path}"]
    if sorted(ours.outputs) != sorted(nix.outputs):
        lines.append(f"outputs: ours {sorted(ours.outputs)}, nix {sorted(nix.outputs)}")
    for name in sorted(set(ours.outputs) & set(nix.outputs)):
        lines += _output_diff(name, ours, nix)
    return lines


def _output_diff(name: str, ours: Side, nix: Side) -> list[str]:
    o, n = ours.outputs[name], nix.outputs[name]
    fields: list[str] = []
    for what, a, b in (("path", o.path, n.path), ("narHash", o.nar_hash, n.nar_hash),
                       ("narSize", o.nar_size, n.nar_size)):
        if a != b:
            fields += [f"  {what + ':':<12} ours {a}", f"  {'':<12} nix  {b}"]
    if o.references != n.references:
        only_o = [store_name(r) for r in o.references if r not in n.references]
        only_n = [store_name(r) for r in n.references if r not in o.references]
        fields.append(f"  {'references:':<12} only in ours {only_o}, only in nix {only_n}")
    if name in ours.trees and name in nix.trees:
        tree = tree_diff(ours.trees[name], nix.trees[name])
        if tree:
            fields += ["  files (- nix, + ours):", *(f"    {line}" for line in tree)]
    return [f"output {name}:", *fields] if fields else []
