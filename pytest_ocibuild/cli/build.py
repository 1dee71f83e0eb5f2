"""``ocibuild build``, ``spec``, ``add`` and ``log``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pytest_ocibuild.cli.common import add_store, executor_args, live_args, store_dir
from pytest_ocibuild.errors import BuildFailed, InvalidRequest, OcibuildError, StoreError
from pytest_ocibuild.nix.command import kept_root, report_kept

__all__ = ["BadUsage", "add_build_commands", "failure_json", "kept_root"]


class BadUsage(OcibuildError):
    """A command-line argument that cannot be used (exit 2; the message names it)."""

    reason = "usage"


def add_build_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``build``, ``spec``, ``add`` and ``log``."""
    b = sub.add_parser("build", help="run a build request in a runc sandbox",
                       description="Run a build request in a runc sandbox and print each "
                       "output's castore node.")
    b.add_argument("request", type=Path, help="request file (.yaml or .json)")
    b.add_argument("--export", type=Path, metavar="DIR",
                   help="write the outputs as files under DIR (which must not hold them yet)")
    executor_args(b)
    live_args(b)
    b.set_defaults(handler=cmd_build)
    s = sub.add_parser("spec", help="print the OCI config.json a request would run with")
    s.add_argument("request", type=Path, help="request file (.yaml or .json)")
    add_store(s)
    s.add_argument("--canonical", action="store_true",
                   help="use the canonical uid/gid maps of golden files, not this host's")
    s.set_defaults(handler=cmd_spec)
    a = sub.add_parser("add", help="ingest a host path into the store and print its node")
    a.add_argument("path", type=Path, help="file, directory or symlink to ingest")
    add_store(a)
    a.set_defaults(handler=cmd_add)
    lg = sub.add_parser("log", help="print the kept log of a build")
    lg.add_argument("key", help="build key, as printed by 'build' (or its --json \"key\"); "
                    "a unique prefix is enough")
    add_store(lg)
    lg.set_defaults(handler=cmd_log)


def cmd_build(args: argparse.Namespace) -> int:
    """Build, export, print the outputs (and the key, the kept bundle)."""
    from pytest_ocibuild.build.events import Live
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.build.limits import Limits
    from pytest_ocibuild.build.request import node_to_dict
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.build.results import result_key
    from pytest_ocibuild.castore.ingest import ingest_path
    from pytest_ocibuild.castore.trees import export

    if args.events and args.json:
        raise BadUsage("--events and --json both write stdout: choose one")
    executor = open_executor(store=store_dir(args), runtime=args.runtime, inputs=args.inputs,
                             keep_bundles=args.keep_bundle, timeout=args.timeout,
                             cache=not args.no_cache, limits=Limits.from_options(args))
    request = load_request(args.request, ingest=lambda p: ingest_path(executor.store, p))
    if args.export:
        _check_export(args.export, request.outputs)
    key = args.build_key = result_key(request)
    try:
        build = executor.build(request, listener=Live(
            events=sys.stdout if args.events else None,
            logs=sys.stderr.buffer if _show_logs(args) else None).listener())
    finally:
        if args.keep_bundle:
            args.kept_bundles = [str(p) for p in report_kept(executor, request.digest.hex)]
    if args.export:
        for path, node in zip(request.outputs, build.outputs, strict=True):
            dest = args.export / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            export(executor.store, node, dest)
    if args.events:  # stdout holds the events only
        return 0
    if args.json:
        d = build.to_dict()
        d.pop("request", None)  # the request digest is not the key `log` takes
        kept = {"kept_bundles": args.kept_bundles} if args.keep_bundle else {}
        print(json.dumps({"ok": True, "key": key, **d, **kept}, indent=2))
        return 0
    for path, node in zip(request.outputs, build.outputs, strict=True):
        nd = node_to_dict(node)
        what = nd.get("digest") or f"-> {nd['target']}"
        refs = build.references(path)
        extra = f"  refs: {', '.join(refs)}" if refs else ""
        print(f"{path}\t{nd['type']}\t{what}{extra}")
    how = (f"cached (built in {build.duration:.2f}s before)" if build.cached
           else f"built in {build.duration:.2f}s")
    print(f"{how}; key {key[:16]} (ocibuild log {key[:16]})", file=sys.stderr)
    return 0


def _show_logs(args: argparse.Namespace) -> bool:
    """``-L``, or by default when stderr is a terminal (and stdout is not JSON)."""
    if args.print_build_logs is not None:
        return bool(args.print_build_logs)
    return sys.stderr.isatty() and not args.json and not args.events


def _check_export(where: Path, outputs: tuple[str, ...]) -> None:
    """Refuse (before building) an --export that would overwrite something."""
    if where.exists() and not where.is_dir():
        raise BadUsage(f"--export {where}: exists and is not a directory")
    for path in outputs:
        if os.path.lexists(where / path):
            raise BadUsage(f"--export {where}: {where / path} already exists "
                           "(remove it or choose another directory)")


def cmd_spec(args: argparse.Namespace) -> int:
    """Print the config.json."""
    from pytest_ocibuild.build.ids import IdMaps
    from pytest_ocibuild.build.request_io import load_request
    from pytest_ocibuild.build.spec import make_spec
    from pytest_ocibuild.castore.ingest import ingest_path
    from pytest_ocibuild.castore.store import open_store

    store = open_store(store_dir(args))
    request = load_request(args.request, ingest=lambda p: ingest_path(store, p))
    maps = IdMaps.canonical() if args.canonical else IdMaps.detect()
    print(json.dumps(make_spec(request, id_maps=maps), indent=2))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Ingest a host path."""
    from pytest_ocibuild.build.request import node_to_dict
    from pytest_ocibuild.castore.ingest import ingest_path
    from pytest_ocibuild.castore.store import open_store

    if not args.path.exists() and not args.path.is_symlink():
        raise BadUsage(f"{args.path}: no such file or directory")
    store = open_store(store_dir(args))
    try:
        node = ingest_path(store, args.path)
    except StoreError as e:
        if e.reason != "unsupported-file-type":
            raise
        raise BadUsage(e.message) from None
    print(json.dumps(node_to_dict(node)))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    """Copy a kept log to stdout."""
    from pytest_ocibuild.build.results import ResultStore

    results = ResultStore(store_dir(args))
    key = results.resolve(args.key)
    path = results.log_path(key)
    if not path.exists():
        raise InvalidRequest(f"build {key} has a result but no kept log")
    with path.open("rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.flush()
    return 0


def failure_json(args: argparse.Namespace, e: OcibuildError) -> str:
    """The ``--json`` object of a failed command."""
    failure: dict[str, Any] = {"reason": e.reason, "message": e.message}
    if isinstance(e, BuildFailed):
        failure.update(exit_code=e.exit_code, log=e.log_path)
        if e.path:
            failure["path"] = e.path
    out: dict[str, Any] = {"ok": False}
    if getattr(args, "build_key", None):
        out["key"] = args.build_key
    out["failure"] = failure
    if getattr(args, "kept_bundles", None):
        out["kept_bundles"] = args.kept_bundles
    return json.dumps(out, indent=2)
