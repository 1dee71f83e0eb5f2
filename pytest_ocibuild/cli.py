"""``ocibuild``: run build requests (and Nix derivations) from the command line.

Exit codes: 0 success, 1 build failed (or cannot run), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_ocibuild.castore.store import Store
from pytest_ocibuild.errors import (
    BuildFailed,
    CaseError,
    InvalidRequest,
    NixError,
    OcibuildError,
)

BAD_INPUT = (InvalidRequest, CaseError, NixError)


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, help="castore directory (default: $OCIBUILD_STORE "
                   "or ~/.cache/ocibuild/store)")
    p.add_argument("--runtime", default="runc", help="OCI runtime binary (default: runc)")
    p.add_argument("--inputs", default="materialize", choices=["materialize", "fuse"],
                   help="how inputs are served (default: materialize)")
    p.add_argument("--timeout", type=float, help="kill the build after this many seconds")
    p.add_argument("--keep-bundle", action="store_true", help="keep the bundle for debugging")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocibuild", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run a build request in a runc sandbox")
    b.add_argument("request", type=Path, help="request file (.yaml or .json)")
    b.add_argument("--export", type=Path, help="write the outputs under this directory")
    _executor_args(b)
    b.set_defaults(handler=cmd_build)
    s = sub.add_parser("spec", help="print the OCI config.json a request would run with")
    s.add_argument("request", type=Path)
    s.add_argument("--store", type=Path)
    s.add_argument("--canonical", action="store_true",
                   help="use the canonical uid/gid maps of golden files, not this host's")
    s.set_defaults(handler=cmd_spec)
    a = sub.add_parser("add", help="ingest a host path into the store and print its node")
    a.add_argument("path", type=Path)
    a.add_argument("--store", type=Path)
    a.set_defaults(handler=cmd_add)
    return parser


def _store(args: argparse.Namespace) -> Store:
    from pytest_ocibuild.build.executor import default_store_dir
    from pytest_ocibuild.castore.store import open_store

    return open_store(args.store or default_store_dir())


def cmd_build(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.build.request import node_to_dict
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.castore.ingest import export, ingest_path

    executor = open_executor(store=args.store, runtime=args.runtime, inputs=args.inputs,
                             keep_bundles=args.keep_bundle, timeout=args.timeout)
    request = load_request(args.request, ingest=lambda p: ingest_path(executor.store, p))
    build = executor.build(request)
    if args.export:
        for path, node in zip(request.outputs, build.outputs, strict=True):
            dest = args.export / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            export(executor.store, node, dest)
    if args.json:
        print(json.dumps(build.to_dict(), indent=2))
        return 0
    for path, node in zip(request.outputs, build.outputs, strict=True):
        d = node_to_dict(node)
        what = d.get("digest") or f"-> {d['target']}"
        refs = build.references(path)
        extra = f"  refs: {', '.join(refs)}" if refs else ""
        print(f"{path}\t{d['type']}\t{what}{extra}")
    print(f"built in {build.duration:.2f}s; log: {build.log_path}", file=sys.stderr)
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.ids import IdMaps
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.build.spec import make_spec
    from pytest_ocibuild.castore.ingest import ingest_path

    store = _store(args)
    request = load_request(args.request, ingest=lambda p: ingest_path(store, p))
    maps = IdMaps.canonical() if args.canonical else IdMaps.detect()
    print(json.dumps(make_spec(request, id_maps=maps), indent=2))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.request import node_to_dict
    from pytest_ocibuild.castore.ingest import ingest_path

    if not args.path.exists() and not args.path.is_symlink():
        raise InvalidRequest(f"{args.path}: no such file or directory")
    print(json.dumps(node_to_dict(ingest_path(_store(args), args.path))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocibuild`` console script."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("ocibuild: interrupted", file=sys.stderr)
        return 130
    except BuildFailed as e:
        if e.detail:
            print(e.detail, file=sys.stderr)
        print(f"ocibuild: error: {e.message}", file=sys.stderr)
        return 1
    except BAD_INPUT as e:
        print(f"ocibuild: error: {e.message}", file=sys.stderr)
        return 2
    except OcibuildError as e:
        print(f"ocibuild: error: {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
