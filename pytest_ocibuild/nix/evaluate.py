"""The subprocess boundary to Nix's command-line tools (read-only: we never write /nix/store).

``instantiate`` evaluates a ``.nix`` file into a ``.drv`` path with ``nix-instantiate`` (which
adds the ``.drv`` files and sources to the local store, as ``nix-build`` would);
``path_infos`` reads the registration of existing store paths. Every failure is a NixError with
one line: Nix's last ``error:`` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_ocibuild.errors import NixError

NIX_CONF = Path("/etc/nix/nix.conf")


def store_args(store_root: str | Path | None) -> list[str]:
    """``--store local?root=DIR`` for a private store (paths still read ``/nix/store/…``)."""
    if store_root is None or str(store_root) == "/":
        return []
    return ["--store", f"local?root={os.path.abspath(store_root)}"]


def _spawn(argv: Sequence[str], what: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "NIX_REMOTE"}
    env["NIX_REMOTE"] = ""  # the local store, as `NIX_REMOTE= nix-build` uses it
    try:
        return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    except FileNotFoundError:
        raise NixError(f"{argv[0]} is not installed (needed to {what})") from None


def _collect(proc: subprocess.Popen[str], what: str) -> str:
    with proc:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise NixError(f"{what}: {_last_error(err)}")
    return out


def _run(argv: Sequence[str], what: str) -> str:
    return _collect(_spawn(argv, what), what)


def _last_error(stderr: str) -> str:
    """Nix's last ``error:`` line, with the ``at FILE:LINE:COL`` that follows it, if any."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    at = errors[-1] if errors else len(lines) - 1
    line = lines[at] if lines else "failed"
    where = next((ln for ln in lines[at + 1:at + 3] if ln.startswith("at ")), "")
    return f"{line.removeprefix('error:').strip()} {where.rstrip(':')}".strip()


def instantiate(
    file: str | Path,
    *,
    attr: str | None = None,
    args: Mapping[str, str] | None = None,
    argstrs: Mapping[str, str] | None = None,
    store_root: str | Path | None = None,
) -> str:
    """``nix-instantiate FILE [-A ATTR] [--arg N EXPR]... [--argstr N S]...`` → the .drv path.

    An output selector Nix prints (``…drv!dev``) is dropped: we build every output. With
    ``store_root`` the ``.drv`` files and sources go into that private store instead of
    ``/nix/store``.
    """
    return start_instantiate(file, attr=attr, args=args, argstrs=argstrs,
                             store_root=store_root)()


def start_instantiate(
    file: str | Path,
    *,
    attr: str | None = None,
    args: Mapping[str, str] | None = None,
    argstrs: Mapping[str, str] | None = None,
    store_root: str | Path | None = None,
    options: Sequence[str] = (),
) -> Callable[[], str]:
    """``instantiate`` started in the background: returns a function that waits for it and
    gives the .drv path (or raises its NixError), so the caller can work meanwhile.
    ``options``: more nix-instantiate options (``--show-trace``, experimental features)."""
    argv = ["nix-instantiate", *store_args(store_root), *options, str(file)]
    if attr:
        argv += ["-A", attr]
    for n, e in (args or {}).items():
        argv += ["--arg", n, e]
    for n, s in (argstrs or {}).items():
        argv += ["--argstr", n, s]
    what = f"cannot evaluate {file}"
    proc = _spawn(argv, what)

    def result() -> str:
        out = _collect(proc, what).split()
        drvs = sorted({p.split("!", 1)[0] for p in out})
        if len(drvs) != 1 or not drvs[0].endswith(".drv"):
            raise NixError(f"{file}: expected one derivation, nix-instantiate gave {len(drvs)}")
        return drvs[0]

    return result


def known_drv_paths(
    file: str | Path,
    attrs: Sequence[str],
    *,
    args: Mapping[str, str] | None = None,
    argstrs: Mapping[str, str] | None = None,
    store_root: str | Path | None = None,
) -> dict[str, str]:
    """The ``.drv`` paths of many attributes of ``file``, from one read-only evaluation.

    ``nix-instantiate --eval --json FILE -A a.drvPath -A b.drvPath ...`` prints one value per
    attribute, in order, and writes nothing. Only attributes whose ``.drv`` (with its sources)
    is already in the store are returned: the rest still need ``instantiate``. Any evaluation
    error gives ``{}`` (each attribute then goes through ``instantiate``, which names it).
    """
    if not attrs:
        return {}
    argv = ["nix-instantiate", "--eval", "--json", *store_args(store_root), str(file)]
    for n, e in (args or {}).items():
        argv += ["--arg", n, e]
    for n, s in (argstrs or {}).items():
        argv += ["--argstr", n, s]
    for attr in attrs:
        argv += ["-A", f"{attr}.drvPath"]
    try:
        paths = _json_values(_run(argv, f"cannot evaluate {file}"))
    except (NixError, ValueError):
        return {}
    if len(paths) != len(attrs) or not all(isinstance(p, str) for p in paths):
        return {}
    root = os.path.abspath(store_root) if store_root is not None else "/"
    return {a: p for a, p in zip(attrs, paths, strict=True)
            if p.endswith(".drv") and os.path.isfile(root + p if root != "/" else p)}


def _json_values(text: str) -> list[Any]:
    """The JSON values ``nix-instantiate --eval --json`` printed, one per ``-A``, unseparated."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return values
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)


def path_infos(paths: Iterable[str],
               store_root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Registration of ``paths`` and their closure: ``{path: {narHash, narSize, references,
    ca?}}`` from ``nix path-info --json --recursive`` (a read-only query of the local store)."""
    paths = sorted(set(paths))
    result: dict[str, dict[str, Any]] = {}
    # `nix path-info X.drv` means the derivation's outputs; `--derivation` the file itself
    # (and is refused for paths that are not derivations): two queries
    drvs = [p for p in paths if p.endswith(".drv")]
    for group, flag in ((drvs, ["--derivation"]), ([p for p in paths if p not in drvs], [])):
        if not group:
            continue
        out = _run(["nix", "--extra-experimental-features", "nix-command", "path-info",
                    *store_args(store_root), "--json", "--recursive", *flag, *group],
                   "cannot query the Nix store")
        for entry in json.loads(out):
            if entry.get("valid") is False:
                raise NixError(f"path '{entry['path']}' is not valid in the Nix store")
            result[entry["path"]] = entry
    return result


def nix_settings() -> dict[str, str]:
    """Settings from ``/etc/nix/nix.conf`` then ``$NIX_CONFIG`` (``extra-`` ones appended)."""
    settings: dict[str, str] = {}
    texts = []
    with contextlib.suppress(OSError):
        texts.append(NIX_CONF.read_text())
    texts.append(os.environ.get("NIX_CONFIG", ""))
    for text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if "=" not in line:
                continue
            key, value = (s.strip() for s in line.split("=", 1))
            if key.startswith("extra-"):
                key = key[len("extra-"):]
                settings[key] = f"{settings.get(key, '')} {value}".strip()
            else:
                settings[key] = value
    return settings
