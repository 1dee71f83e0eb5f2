"""ocibuild: run build requests (and Nix derivations) in a runc sandbox from the command line.

Every expected failure is one ``ocibuild: error:`` line on stderr; exit codes: 0 success,
1 the build failed (or could not run), 2 bad input or usage, 130 interrupted, 141 stdout
closed early (``| head``). ``OCIBUILD_DEBUG=1`` shows the traceback of an error instead.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from collections.abc import Sequence

from pytest_ocibuild.cli.build import BadUsage, add_build_commands, failure_json
from pytest_ocibuild.cli.common import executor_args, parse_size
from pytest_ocibuild.cli.store import add_store_commands
from pytest_ocibuild.errors import BuildFailed, CaseError, InvalidRequest, NixError, OcibuildError

__all__ = ["main", "parse_size"]

BAD_INPUT = (InvalidRequest, CaseError, NixError)
DESCRIPTION = "Run build requests and Nix derivations in a runc sandbox over a content-addressed \
store."
EPILOG = """exit codes: 0 success, 1 the build failed (or could not run), 2 bad input or usage,
130 interrupted, 141 stdout closed early. Docs: docs/cli.md, docs/store.md,
docs/troubleshooting.md."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), pointing at ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("pytest-ocibuild")
    except PackageNotFoundError:
        from pytest_ocibuild import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ocibuild", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ocibuild {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_build_commands(sub)
    add_store_commands(sub)
    from pytest_ocibuild.nix.command import add_nix_build

    add_nix_build(sub, functools.partial(executor_args, nix=True))
    from pytest_ocibuild.image.command import add_image

    add_image(sub, executor_args)
    from pytest_ocibuild.build.doctor import add_doctor

    add_doctor(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocibuild`` console script: the exit code."""
    args: argparse.Namespace | None = None
    try:
        args = _parser().parse_args(argv)
        _check_store(args)
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("ocibuild: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        _drop_stdout()
        return 141
    except OcibuildError as e:
        if os.environ.get("OCIBUILD_DEBUG"):
            raise
        return _report(args, e)
    except OSError as e:
        if os.environ.get("OCIBUILD_DEBUG"):
            raise
        print(f"ocibuild: error: {_os_error(e)}", file=sys.stderr)
        return 1
    except (RecursionError, UnicodeError) as e:  # hostile input the loaders did not bound: a bug
        first = (str(e).splitlines() or [""])[0]
        problem = f"cannot process input ({type(e).__name__}: {first:.200})"
        print(f"ocibuild: error: {_naming_input(args, problem)}", file=sys.stderr)
        return 2


NO_STORE_CHECK = {"doctor"}  # reports an unusable store itself
NIX_LIKE = {"nix-build"}  # stdout stays empty on failure, as with Nix


def _check_store(args: argparse.Namespace) -> None:
    """A command with ``--store`` gets its store checked (and made) first: one line (exit 2)
    naming it when it cannot be used, whichever command it is."""
    if "store" not in vars(args) or args.command in NO_STORE_CHECK:
        return
    from pytest_ocibuild.build.locations import default_store_dir
    from pytest_ocibuild.build.store_dir import usable_store_dir

    args.store = usable_store_dir(args.store or default_store_dir())


def _report(args: argparse.Namespace | None, e: OcibuildError) -> int:
    """Print ``e`` (its log tail first, for a failed build) and return the exit code."""
    from pytest_ocibuild.build.store_dir import StoreUnusable

    bad = isinstance(e, (*BAD_INPUT, BadUsage, StoreUnusable))
    if args is not None and getattr(args, "json", False) and args.command not in NIX_LIKE:
        print(failure_json(args, e))
    if isinstance(e, BuildFailed) and e.detail:
        print(e.detail, file=sys.stderr)
    key = getattr(args, "build_key", None)
    if isinstance(e, BuildFailed) and key:
        print(f"failed; key {key[:16]} (ocibuild log {key[:16]})", file=sys.stderr)
    message = _naming_input(args, e.message) if isinstance(e, BAD_INPUT) else _one_line(e.message)
    print(f"ocibuild: error: {message}", file=sys.stderr)
    return 2 if bad else 1


def _os_error(e: OSError) -> str:
    """``FILE: problem (next step)`` for an OSError nothing else turned into a message."""
    where = f"{e.filename}: " if e.filename else ""
    text = f"{where}{e.strerror or e}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{text} (free space, e.g. with 'ocibuild store gc', or use another --store)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{text} (check its permissions, or use another --store)"
    return text


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def _one_line(message: str) -> str:
    return " ".join(message.splitlines()) or "failed"


def _naming_input(args: argparse.Namespace | None, message: str) -> str:
    """``message`` as one line, prefixed with the request file (build, spec) if it lacks it."""
    message = " ".join(message.splitlines()) or "bad input"
    source = getattr(args, "request", None)
    if source is None or message.startswith(str(source)):
        return message
    return f"{source}: {message}"


if __name__ == "__main__":
    sys.exit(main())
