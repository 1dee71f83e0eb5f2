"""Shared pieces of the ``ocibuild`` sub-commands: options, value types, the store."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

STORE_HELP = "castore directory (default: $OCIBUILD_STORE or ~/.cache/ocibuild/store)"


def _float(text: str, what: str = "number of seconds") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
    if math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}")
    return value


def positive_seconds(text: str) -> float:
    """A timeout: a number of seconds > 0 (omit the option for none)."""
    if not (value := _float(text)) > 0:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 seconds, got {text} (leave it out for no timeout)")
    return value


def nix_seconds(text: str) -> float:
    """nix-build's ``--timeout``: seconds >= 0, 0 meaning none as in Nix."""
    if not (value := _float(text)) >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 (none) or more seconds, got {text}")
    return value


def non_negative(text: str) -> float:
    """An age or grace period: a number >= 0."""
    if not (value := _float(text, "number")) >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def parse_size(text: str) -> int:
    """``1234``, ``500M``, ``10G``, ``1.5GiB`` (binary units) as bytes, 0 allowed
    (build.limits.parse_size)."""
    from pytest_ocibuild.build.limits import parse_size as size
    from pytest_ocibuild.errors import InvalidRequest

    try:
        return size(text, "size", minimum=0)
    except InvalidRequest:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def human(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ..."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def add_store(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--store DIR``."""
    p.add_argument("--store", type=Path, metavar="DIR", help=STORE_HELP)


def executor_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                  nix: bool = False) -> None:
    """The options of every command that builds (``nix``: nix-build's ``--timeout``)."""
    add_store(p)
    p.add_argument("--runtime", default="runc", type=runtime_name, metavar="NAME",
                   help="sandbox runtime: runc, crun, runsc (gVisor), bwrap (bubblewrap), or "
                   "the path of a runc-compatible binary (default: runc)")
    p.add_argument("--inputs", default="materialize", choices=["materialize", "fuse"],
                   help="how inputs are served: hardlinks under a read-only bind mount, or "
                   "FUSE (default: materialize)")
    if nix:
        p.add_argument("--timeout", type=nix_seconds, metavar="SECONDS",
                       help="kill a build running longer than this (0: no limit, as in Nix)")
    else:
        p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                       help="kill the build after this many seconds, > 0 (default: none)")
    limit_args(p, silence=not nix)  # nix-build has its own --max-silent-time
    p.add_argument("--keep-bundle", action="store_true",
                   help="keep the OCI bundle and print its path (remove it with "
                   "'ocibuild store purge --kept')")
    p.add_argument("--no-cache", action="store_true",
                   help="build even if a result is recorded (the new result is recorded)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout, on failure too")


def live_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``-L``/``--print-build-logs`` and ``--events`` (build.events.Live)."""
    p.add_argument("-L", "--print-build-logs", action=argparse.BooleanOptionalAction,
                   default=None, help="show the build's log on stderr as it runs (default: "
                   "when stderr is a terminal)")
    p.add_argument("--events", action="store_true",
                   help="write the build's events as JSON lines on stdout (docs/events.md)")


def limit_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *,
               silence: bool = True) -> None:
    """Resource limits for builds that do not set their own (README "Sandbox")."""
    from pytest_ocibuild.build.limits import DEFAULT_ENTRIES, DEFAULT_PIDS

    p.add_argument("--pids", dest="limit_pids", type=_positive_int, metavar="N",
                   help=f"processes a build may have at once (default: {DEFAULT_PIDS})")
    p.add_argument("--memory", dest="limit_memory", type=_positive_size, metavar="SIZE",
                   help="memory a build may use, swap included, e.g. 2G (default: 8G, or "
                   "constraints.min_memory if larger)")
    p.add_argument("--disk", dest="limit_disk", type=_positive_size, metavar="SIZE",
                   help="bytes a build may leave in scratch paths, caches and /tmp "
                   "(default: 10G)")
    p.add_argument("--entries", dest="limit_entries", type=_positive_int, metavar="N",
                   help=f"files, directories and symlinks it may leave there (default: "
                   f"{DEFAULT_ENTRIES})")
    if silence:
        p.add_argument("--max-silent-time", type=positive_seconds, metavar="SECONDS",
                       help="kill a build printing nothing for this long (default: none)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _positive_size(text: str) -> int:
    value = parse_size(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return value


def store_dir(args: argparse.Namespace) -> Path:
    """The store directory of ``args`` (``--store``, else the default), checked usable."""
    from pytest_ocibuild.build.locations import default_store_dir
    from pytest_ocibuild.build.store_dir import usable_store_dir

    return usable_store_dir(args.store or default_store_dir())


def runtime_name(text: str) -> str:
    """A ``--runtime`` value: a backend's name or a path (build.runtime.open_runtime)."""
    from pytest_ocibuild.build.runtime import RUNTIMES

    if text in RUNTIMES or "/" in text:
        return text
    raise argparse.ArgumentTypeError(f"unknown runtime {text!r} (choose {', '.join(RUNTIMES)}, "
                                     "or the path of a runc-compatible binary)")
