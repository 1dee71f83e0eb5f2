"""Nix's own functional tests as a differential corpus (nothing of Nix is committed here).

``fetch()`` downloads Debian's ``nix`` source package with an apt configuration of its own (a
``deb-src`` entry for each mirror the machine's apt sources use, its own lists and caches under
the cache dir: the machine's package lists are never touched), unpacks ``tests/`` of the
upstream tarball into ``$XDG_CACHE_HOME/ocibuild/nix-tests`` and writes a busybox
``config.nix`` (there is no nixpkgs: ``shell`` is Debian's static bash, ``bash-static``, or
busybox's ``sh`` without it; ``path`` is busybox with a link per applet).
``discover()`` lists every derivation the top-level ``tests/*.nix`` and ``tests/ca/*.nix``
files give (attributes, one level of nesting, list elements), with the outcome and the options
Nix's shell scripts give them (``hints``).

    python -m tests.nixdiff.nixtests            # fetch if needed, print the cases
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "2.8.0"
CA_OPTIONS = ("--extra-experimental-features", "ca-derivations")
# options of Nix's scripts passed on to both builders; the rest is named in Case.dropped
PASSED = {"-j", "--max-jobs", "--keep-going", "-k", "--option", "--arg", "--argstr",
          "--cores", "--extra-experimental-features", "--experimental-features", "-Q",
          "--timeout", "--max-silent-time", "-K", "--keep-failed"}
NEUTRAL = {"--no-out-link", "-o", "--out-link"}  # where the result link goes: nothing here
WITH_VALUE = {"-j": 1, "--max-jobs": 1, "--cores": 1, "--option": 2, "--arg": 2,
              "--argstr": 2, "--extra-experimental-features": 1, "--experimental-features": 1,
              "-o": 1, "--out-link": 1, "-A": 1, "--attr": 1, "--timeout": 1,
              "--max-silent-time": 1, "--max-build-log-size": 1}
# every case gets a build timeout (some of Nix's builders never end on their own)
DEFAULT_OPTIONS = ("--timeout", "60")
FILE_OPTIONS = {"timeout.nix": ("--timeout", "5")}
CONFIG_NIX = """\
# written by tests/nixdiff/nixtests.py: Nix's config.nix.in, with a static bash (busybox's sh
# without bash-static) and busybox's applets for coreutils
let
  bb = builtins.path { path = @BBDIR@; name = "busybox-dir"; };
  sh = builtins.path { path = @SHDIR@; name = "shell-dir"; };
  contentAddressedByDefault = builtins.getEnv "NIX_TESTS_CA_BY_DEFAULT" == "1";
  caArgs = if contentAddressedByDefault then {
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  } else {};
in

rec {
  shell = "${sh}/@SHELL@";

  path = "${bb}";

  system = "x86_64-linux";

  shared = builtins.getEnv "_NIX_TEST_SHARED";

  mkDerivation = args:
    derivation ({
      inherit system;
      builder = shell;
      args = ["-e" args.builder or (builtins.toFile "builder-${args.name}.sh"
        "if [ -e .attrs.sh ]; then source .attrs.sh; fi; eval \\"$buildCommand\\"")];
      PATH = path;
    } // caArgs // removeAttrs args ["builder" "meta"])
    // { meta = args.meta or {}; };
}
"""
# the derivations of one file: attribute paths, as nix-build's -A takes them (shell.nix's
# `pkgs` repeats its top level; drvPath is not forced: some fail beyond tryEval's reach)
DISCOVER = """\
let
  v0 = import @FILE@;
  v = if builtins.isFunction v0 then
        (if builtins.all (x: x) (builtins.attrValues (builtins.functionArgs v0)) then v0 {}
         else {})
      else v0;
  ok = x: let t = builtins.tryEval x; in if t.success then t.value else null;
  isDrv = x: let t = builtins.tryEval (builtins.isAttrs x && (x.type or null) == "derivation");
             in t.success && t.value;
  quote = n: if builtins.match "[a-zA-Z_][a-zA-Z0-9_'-]*" n != null then n
             else "\\"" + n + "\\"";
  level = depth: prefix: x:
    if isDrv x then [ prefix ]
    else if depth > 1 then []
    else if ok (builtins.isList x) == true then
      builtins.concatLists (builtins.genList (i: level (depth + 1)
        (prefix + (if prefix == "" then "" else ".") + toString i)
        (ok (builtins.elemAt x i))) (builtins.length x))
    else if ok (builtins.isAttrs x) == true then
      builtins.concatMap (n: level (depth + 1)
        (prefix + (if prefix == "" then "" else ".") + quote n) (ok x.${n}))
        (builtins.filter (n: n != "pkgs") (builtins.attrNames x))
    else [];
in level 0 "" (ok v)
"""


class CorpusUnavailable(RuntimeError):
    """Debian's nix source package could not be fetched or unpacked (the reason says why)."""


@dataclass
class Case:
    """One derivation of Nix's tests: ``file`` (relative to tests/), ``attr`` ("" for the
    file itself), the options both builders get, what Nix's scripts expect."""

    file: str
    attr: str
    options: list[str] = field(default_factory=list)
    expect: str = "?"  # "build", "fail" or "?" (no script builds it alone)
    dropped: list[str] = field(default_factory=list)  # script options not passed on

    @property
    def id(self) -> str:
        return f"{self.file}:{self.attr}" if self.attr else self.file

    def args(self, tests: Path) -> list[str]:
        return [str(tests / self.file), *(["-A", self.attr] if self.attr else []),
                *self.options]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocibuild" / "nix-tests"


def apt_mirrors() -> list[tuple[str, str, str]]:
    """``(uri, suite, components)`` of the machine's ``deb`` entries (one-line and deb822)."""
    found: list[tuple[str, str, str]] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split():
                    for uri in fields.get("URIs", "").split():
                        for suite in fields.get("Suites", "").split():
                            found.append((uri, suite, fields.get("Components", "main")))
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if m:
                    found.append((m.group(1), m.group(2), m.group(3) or "main"))
    # the release's own suite first (security and updates mirrors do not carry nix 2.8)
    return sorted(set(found), key=lambda e: ("security" in e[0], "-" in e[1], e))


def fetch(cache: Path | None = None) -> Path:
    """The unpacked ``tests`` directory of Nix's source (downloaded once)."""
    cache = cache or cache_dir()
    tests = cache / f"nix-{VERSION}" / "tests"
    if (tests / "config.nix.in").is_file():
        return tests
    if shutil.which("apt-get") is None:
        raise CorpusUnavailable("apt-get is not installed: cannot fetch Debian's nix source")
    mirrors = apt_mirrors()
    if not mirrors:
        raise CorpusUnavailable("no deb entry in /etc/apt/sources.list(.d) to take a mirror from")
    apt = cache / "apt"
    parts, lists, caches, src = apt / "sources.d", apt / "lists", apt / "cache", apt / "src"
    for d in (parts, lists / "partial", caches / "archives" / "partial", src):
        d.mkdir(parents=True, exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    signed = f"Signed-By: {keyring}\n" if os.path.exists(keyring) else ""
    (parts / "nix-src.sources").write_text("".join(
        f"Types: deb-src\nURIs: {u}\nSuites: {s}\nComponents: {c}\n{signed}\n"
        for u, s, c in mirrors))
    opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={caches}",
            "-o", "APT::Sandbox::User=root"]
    for argv in (["apt-get", *opts, "update"],
                 ["apt-get", *opts, "source", "--download-only", f"nix={VERSION}-*"]):
        proc = subprocess.run(argv, cwd=src, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 and argv[-1] != "update":
            proc = subprocess.run([*argv[:-1], "nix"], cwd=src, capture_output=True,
                                  text=True, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise CorpusUnavailable(f"{' '.join(argv[:1] + argv[-2:])}: {last}")
    tarball = src / f"nix_{VERSION}.orig.tar.xz"
    if not tarball.is_file():
        raise CorpusUnavailable(f"apt-get source gave no {tarball.name} (another nix version?)")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(f"nix-{VERSION}/tests/") and (m.isfile() or m.isdir()
                                                                     or m.issym())]
        tar.extractall(cache, members=members, filter="data")
    if not (tests / "config.nix.in").is_file():
        raise CorpusUnavailable(f"{tarball.name} has no tests/config.nix.in")
    return tests


def prepare(tests: Path) -> Path:
    """The busybox directory (``busybox`` and a link to it for each applet), the shell's
    (``bash``: a copy of ``/bin/bash-static``; without it ``sh`` → busybox) and
    ``config.nix`` naming them."""
    bb = tests.parent / "busybox-dir"
    if not (bb / "sh").is_symlink():
        bb.mkdir(exist_ok=True)
        shutil.copy2("/bin/busybox", bb / "busybox")
        applets = subprocess.run([str(bb / "busybox"), "--list"], capture_output=True,
                                 text=True, check=True).stdout.split()
        for name in sorted(set(applets) | {"sh"}):
            if "/" not in name and name != "busybox":
                os.symlink("busybox", bb / name)
    shell = tests.parent / "shell-dir"
    if not shell.is_dir():
        shell.mkdir()
        if os.path.exists("/bin/bash-static"):
            shutil.copy2("/bin/bash-static", shell / "bash")
        else:
            shutil.copy2("/bin/busybox", shell / "busybox")
            os.symlink("busybox", shell / "sh")
    name = "bash" if (shell / "bash").exists() else "sh"
    config = (CONFIG_NIX.replace("@BBDIR@", str(bb)).replace("@SHDIR@", str(shell))
              .replace("@SHELL@", name))
    if not (tests / "config.nix").is_file() or (tests / "config.nix").read_text() != config:
        (tests / "config.nix").write_text(config)
    for sub in ("ca",):
        link = tests / sub / "config.nix"
        if (tests / sub).is_dir() and not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to("../config.nix")
    return bb


def files(tests: Path) -> list[str]:
    """The test files that build derivations with ``config.nix``."""
    out = []
    for f in sorted([*tests.glob("*.nix"), *tests.glob("ca/*.nix")]):
        text = f.read_text(errors="replace")
        if f.name != "config.nix" and "config.nix" in text and "flake" not in f.name:
            out.append(str(f.relative_to(tests)))
    return out


def discover(tests: Path, env: dict[str, str] | None = None) -> list[Case]:
    """Every derivation of ``files``, with the scripts' options and expectations."""
    hints = script_hints(tests)
    cases: list[Case] = []
    for rel in files(tests):
        expr = DISCOVER.replace("@FILE@", str(tests / rel))
        opts = list(CA_OPTIONS) if rel.startswith("ca/") or "__contentAddressed" in (
            tests / rel).read_text() else []
        proc = subprocess.run(["nix-instantiate", *opts, "--eval", "--strict", "--json",
                               "-E", expr], capture_output=True, text=True, env=env,
                              cwd=tests, timeout=300)
        if proc.returncode != 0:
            continue  # not evaluable on its own (IFD, restricted mode, missing arguments)
        for attr in json.loads(proc.stdout):
            case = hints.get((rel, attr)) or Case(rel, attr)
            given = case.options
            defaults = FILE_OPTIONS.get(rel, DEFAULT_OPTIONS)
            case.options = [*opts, *([] if defaults[0] in given else defaults), *given]
            cases.append(case)
    return cases


def script_hints(tests: Path) -> dict[tuple[str, str], Case]:
    """``(file, attr)`` → Case from the first ``nix-build FILE -A ATTR`` line of a script that
    is not a ``--check``/``--repeat`` run: its expectation (``(! …)``, ``&& fail``) and the
    options it passes (literal ones only)."""
    hints: dict[tuple[str, str], Case] = {}
    for script in sorted(tests.glob("**/*.sh")):
        base = script.parent.relative_to(tests)
        for line in script.read_text(errors="replace").splitlines():
            if "nix-build" not in line or line.lstrip().startswith("#"):
                continue
            try:
                words = shlex.split(line.split("nix-build", 1)[1].split("|")[0].strip(" )"))
                words = [w.rstrip(";") for w in words]
            except ValueError:
                continue
            case = _hint(words, str(base), line)
            if case is not None and (case.file, case.attr) not in hints:
                hints[(case.file, case.attr)] = case
    return hints


def _hint(words: list[str], base: str, line: str) -> Case | None:
    file, attr, options, dropped = None, "", [], []
    i = 0
    while i < len(words):
        w = words[i]
        n = WITH_VALUE.get(w, 0)
        value = words[i + 1:i + 1 + n]
        i += 1 + n
        if w.endswith(".nix") and not w.startswith("-") and file is None:
            file = os.path.normpath(os.path.join(base, w))
        elif w in ("-A", "--attr") and value:
            attr = value[0]
        elif w in ("--check", "--repeat", "--repair", "-E", "--expr", "--store"):
            return None
        elif w in NEUTRAL:
            continue
        elif (w in PASSED or re.fullmatch(r"-j\d+", w)) and not any("$" in v for v in value):
            options += [w, *value]
        elif w.startswith("-") or any("$" in v for v in value):
            dropped += [w, *value]
    if file is None or "$" in attr:
        return None
    failing = line.lstrip().startswith("(!") or "&& fail" in line or "|| status" in line
    return Case(file, attr, options, "fail" if failing else "build", dropped)


def main() -> int:
    try:
        tests = fetch()
    except CorpusUnavailable as e:
        print(f"nixtests: {e}", file=sys.stderr)
        return 1
    prepare(tests)
    cases = discover(tests)
    for c in cases:
        extra = f"  (dropped: {' '.join(c.dropped)})" if c.dropped else ""
        print(f"{c.expect:5} {c.id} {' '.join(c.options)}{extra}")
    print(f"{len(cases)} derivations from {len(files(tests))} files in {tests}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
