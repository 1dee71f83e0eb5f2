"""``ocibuild``: run build requests (and Nix derivations) from the command line.

Exit codes: 0 success, 1 build failed (or cannot run), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_ocibuild.errors import (
    BuildFailed,
    CaseError,
    InvalidRequest,
    NixError,
    OcibuildError,
)

if TYPE_CHECKING:
    from pytest_ocibuild.castore.store import Store

BAD_INPUT = (InvalidRequest, CaseError, NixError)


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, help="castore directory (default: $OCIBUILD_STORE "
                   "or ~/.cache/ocibuild/store)")
    p.add_argument("--runtime", default="runc", help="OCI runtime binary (default: runc)")
    p.add_argument("--inputs", default="materialize", choices=["materialize", "fuse"],
                   help="how inputs are served (default: materialize)")
    p.add_argument("--timeout", type=float, help="kill the build after this many seconds")
    p.add_argument("--keep-bundle", action="store_true", help="keep the bundle for debugging")
    p.add_argument("--no-cache", action="store_true",
                   help="build even if a result is recorded (the new result is recorded)")
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
    lg = sub.add_parser("log", help="print the kept log of a build")
    lg.add_argument("key", help="request digest (hex, or a unique prefix)")
    lg.add_argument("--store", type=Path)
    lg.set_defaults(handler=cmd_log)
    _store_commands(sub)
    _cache_commands(sub)
    from pytest_ocibuild.nix.command import add_nix_build

    add_nix_build(sub, _executor_args)
    from pytest_ocibuild.image.command import add_image

    add_image(sub, _executor_args)
    return parser


def _store_commands(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("store", help="store maintenance: gc, df, verify, purge")
    ss = st.add_subparsers(dest="store_command", required=True)
    g = ss.add_parser("gc", help="drop results beyond the budgets and unreferenced objects")
    g.add_argument("--max-age", type=float, metavar="DAYS",
                   help="drop results not used for this many days")
    g.add_argument("--max-size", type=parse_size, metavar="SIZE",
                   help="keep the most recently used results within SIZE (e.g. 10G, 500M)")
    g.add_argument("--keep-failed", action="store_true", help="keep recorded failures")
    g.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                   help="never delete objects younger than this (default: 600)")
    g.set_defaults(handler=cmd_store_gc)
    d = ss.add_parser("df", help="objects, results, logs and caches with their sizes")
    d.set_defaults(handler=cmd_store_df)
    v = ss.add_parser("verify", help="re-hash every object; exit 1 listing corrupt ones")
    v.set_defaults(handler=cmd_store_verify)
    pg = ss.add_parser("purge", help="remove what crashed runs left behind")
    pg.add_argument("--bundles", type=Path, help="bundle root (default: the per-user one)")
    pg.set_defaults(handler=cmd_store_purge)
    for p in (g, d, v, pg):
        p.add_argument("--store", type=Path)
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _cache_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cache", help="persistent build caches")
    cs = c.add_subparsers(dest="cache_command", required=True)
    ls = cs.add_parser("ls", help="list caches")
    ls.set_defaults(handler=cmd_cache_ls)
    rm = cs.add_parser("rm", help="delete a cache (refused while a build uses it)")
    rm.add_argument("name")
    rm.set_defaults(handler=cmd_cache_rm)
    for p in (ls, rm):
        p.add_argument("--store", type=Path)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``1234``, ``500M``, ``10G``, ``1.5GiB`` (binary units) as bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(value * _UNITS[unit])


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _store(args: argparse.Namespace) -> Store:
    from pytest_ocibuild.castore.store import open_store

    return open_store(_store_dir(args))


def _store_dir(args: argparse.Namespace) -> Path:
    from pytest_ocibuild.build.executor import default_store_dir

    return Path(args.store or default_store_dir())


def cmd_build(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.build.request import node_to_dict
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.build.results import result_key
    from pytest_ocibuild.castore.ingest import export, ingest_path

    executor = open_executor(store=args.store, runtime=args.runtime, inputs=args.inputs,
                             keep_bundles=args.keep_bundle, timeout=args.timeout,
                             cache=not args.no_cache)
    request = load_request(args.request, ingest=lambda p: ingest_path(executor.store, p))
    build = executor.build(request)
    if args.export:
        for path, node in zip(request.outputs, build.outputs, strict=True):
            dest = args.export / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            export(executor.store, node, dest)
    key = result_key(request)
    if args.json:
        print(json.dumps({**build.to_dict(), "key": key}, indent=2))
        return 0
    for path, node in zip(request.outputs, build.outputs, strict=True):
        d = node_to_dict(node)
        what = d.get("digest") or f"-> {d['target']}"
        refs = build.references(path)
        extra = f"  refs: {', '.join(refs)}" if refs else ""
        print(f"{path}\t{d['type']}\t{what}{extra}")
    if build.cached:
        print(f"cached (built in {build.duration:.2f}s before); key {key[:16]} "
              f"(ocibuild log {key[:16]})", file=sys.stderr)
    else:
        print(f"built in {build.duration:.2f}s; key {key[:16]} (ocibuild log {key[:16]})",
              file=sys.stderr)
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


def cmd_log(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.results import ResultStore

    results = ResultStore(_store_dir(args))
    key = results.resolve(args.key)
    path = results.log_path(key)
    if not path.exists():
        raise InvalidRequest(f"build {key} has a result but no kept log")
    with path.open("rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.flush()
    return 0


def cmd_store_gc(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.gc import GRACE, gc

    report = gc(_store_dir(args), max_age=args.max_age * 86400 if args.max_age is not None
                else None, max_size=args.max_size, keep_failed=args.keep_failed,
                grace=GRACE if args.grace is None else args.grace)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"kept {report.records_kept} results; removed {report.records_removed} results, "
              f"{report.blobs_removed} blobs, {report.dirs_removed} directories, "
              f"{report.logs_removed} logs; freed {_human(report.bytes_freed)}")
    return 0


def cmd_store_df(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.gc import df

    usage = df(_store_dir(args))
    if args.json:
        print(json.dumps(usage, indent=2))
        return 0
    for kind, v in usage.items():
        print(f"{kind:<16}{v['count']:>10}  {_human(v['bytes']):>12}")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.gc import verify

    report = verify(_store_dir(args))
    if args.json:
        print(json.dumps({"checked": report.checked, "corrupt": report.corrupt,
                          "missing": report.missing}, indent=2))
    else:
        for line in report.corrupt:
            print(f"corrupt: {line}")
        for line in report.missing:
            print(f"missing: {line}")
        print(f"checked {report.checked} objects: {len(report.corrupt)} corrupt, "
              f"{len(report.missing)} missing", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_store_purge(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.lifecycle import purge
    from pytest_ocibuild.build.locations import bundle_root
    from pytest_ocibuild.build.runtime import open_runtime

    root = _store_dir(args)
    bundles = args.bundles or bundle_root()
    report = purge(store_root=root, bundle_root=bundles,
                   runtime=open_runtime())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(", ".join(f"{len(v)} {k}" for k, v in report.to_dict().items()) + " removed")
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.caches import CacheStore

    for info in CacheStore(_store_dir(args)).ls():
        use = "  (in use)" if info.in_use else ""
        print(f"{info.name}\tgeneration {info.generation}\t{_human(info.size)}{use}")
    return 0


def cmd_cache_rm(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.caches import CacheStore

    if not CacheStore(_store_dir(args)).delete(args.name):
        raise InvalidRequest(f"no cache {args.name!r}")
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
        print(f"ocibuild: error: {_naming_input(args, e.message)}", file=sys.stderr)
        return 2
    except OcibuildError as e:
        print(f"ocibuild: error: {e.message}", file=sys.stderr)
        return 1
    except (RecursionError, UnicodeError) as e:  # hostile input the loaders did not bound: a bug
        first = (str(e).splitlines() or [""])[0]
        problem = f"cannot process input ({type(e).__name__}: {first:.200})"
        print(f"ocibuild: error: {_naming_input(args, problem)}", file=sys.stderr)
        return 2


def _naming_input(args: argparse.Namespace, message: str) -> str:
    """``message`` as one line, prefixed with the request file (build, spec) if it lacks it."""
    message = " ".join(message.splitlines()) or "bad input"
    source = getattr(args, "request", None)
    if source is None or message.startswith(str(source)):
        return message
    return f"{source}: {message}"


if __name__ == "__main__":
    sys.exit(main())
