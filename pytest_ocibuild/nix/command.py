"""``ocibuild nix-build``: the sub-command's arguments and handler (registered by ``cli``).

    ocibuild nix-build [--store DIR] [--json] [--export DIR]
                       (DRV | FILE.nix [-A ATTR] [--arg N EXPR] [--argstr N S])

With ``--json`` stdout is one object ``{"drvPath", "outputs": {name: {"path", "narHash",
"narSize", "references"}}}``; otherwise the output paths, one a line, like ``nix-build``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.locations import default_store_dir
from pytest_ocibuild.errors import NixError


def add_nix_build(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                  executor_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``nix-build`` on the ``ocibuild`` sub-parsers."""
    p = sub.add_parser("nix-build", help="build a Nix derivation in the OCI sandbox")
    p.add_argument("target", help="a /nix/store/….drv path or a .nix file")
    p.add_argument("-A", "--attr", dest="attr", help="attribute of the .nix file to build")
    p.add_argument("--arg", nargs=2, action="append", default=[], metavar=("NAME", "EXPR"))
    p.add_argument("--argstr", nargs=2, action="append", default=[], metavar=("NAME", "STR"))
    p.add_argument("--export", type=Path, help="materialise the outputs under this directory")
    p.add_argument("--cores", type=int, help="NIX_BUILD_CORES (default: Nix's cores setting)")
    p.add_argument("--jobs", "-j", type=int, help="derivations built at once (default: twice "
                   "the CPUs, since a small build spends much of its time waiting on runc)")
    executor_args(p)
    p.set_defaults(handler=cmd_nix_build)


def settings_from_nix() -> object:
    """NixSettings from nix.conf/$NIX_CONFIG (cores, system, extra-platforms, features)."""
    from pytest_ocibuild.nix.evaluate import nix_settings
    from pytest_ocibuild.nix.to_request import DEFAULT_FEATURES, NixSettings

    conf = nix_settings()
    features = set(conf["system-features"].split()) if "system-features" in conf else set(
        DEFAULT_FEATURES | ({"kvm"} if os.access("/dev/kvm", os.R_OK | os.W_OK) else set()))
    if "ca-derivations" in conf.get("experimental-features", "").split():
        features.add("ca-derivations")
    cores = int(conf.get("cores", "0") or 0) or os.cpu_count() or 1
    platforms = set(conf.get("extra-platforms", "i686-linux").split())
    return NixSettings(cores=cores, system=conf.get("system", "x86_64-linux"),
                       extra_platforms=frozenset(platforms), features=frozenset(features),
                       environ=dict(os.environ))


def default_jobs() -> int:
    """Derivations built at once unless ``--jobs`` says: twice the CPUs. One small build keeps
    less than a CPU busy (the container's set-up and teardown are a chain of processes that
    wait on one another), so with only as many as CPUs the machine idles between steps."""
    return 2 * (os.cpu_count() or 1)


def resolve_target(args: argparse.Namespace, state: Path) -> tuple[Callable[[], str], Path | str]:
    """``(wait, store_root)``: ``wait()`` gives the .drv path to build (for a .nix file,
    ``nix-instantiate`` is already running when this returns) and ``store_root`` the store
    the .drv files are read from."""
    target = args.target
    if target.endswith(".drv"):
        if args.attr or args.arg or args.argstr:
            raise NixError("-A, --arg and --argstr apply to .nix files, not to a .drv")
        drv_path = os.path.realpath(target) if not target.startswith("/nix/store/") else target
        return (lambda: drv_path), "/"
    from pytest_ocibuild.nix.evaluate import start_instantiate

    # evaluated into a private store: /nix/store is left alone, even the .drv files
    store_root = state / "eval-store"
    store_root.mkdir(parents=True, exist_ok=True)
    return start_instantiate(target, attr=args.attr, args=dict(args.arg),
                             argstrs=dict(args.argstr), store_root=store_root), store_root


def _in_background(fn: Callable[[], object]) -> Callable[[], None]:
    """Run ``fn`` in a thread; the returned function joins it and re-raises its exception."""
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # handed to the joining thread
            failed.append(e)

    thread = threading.Thread(target=run, name="ocibuild-prepare", daemon=True)
    thread.start()

    def join() -> None:
        thread.join()
        if failed:
            raise failed[0]

    return join


def cmd_nix_build(args: argparse.Namespace) -> int:
    """Evaluate (Nix runs while the executor is imported and prepared), build, report."""
    store_dir = Path(args.store) if args.store else default_store_dir()
    state = store_dir / "nix"  # eval store, sources, results: shared with the pytest plugin
    wait_drv, store_root = resolve_target(args, state)
    try:
        executor, settings, join = _prepare(args, store_dir)
    except BaseException:
        wait_drv()  # Nix's own error, if it has one, is the one to report
        raise
    try:
        drv_path = wait_drv()
    except BaseException:
        with contextlib.suppress(Exception):
            join()  # the evaluation error is the one to report
        raise
    join()
    return _build(args, executor, settings, state, store_root, drv_path)


def _prepare(args: argparse.Namespace, store_dir: Path) -> tuple[Any, Any, Callable[[], None]]:
    """The executor, the Nix settings, and a join for the check that runc works (remembered
    by the runtime), which runs in a thread meanwhile."""
    import dataclasses

    from pytest_ocibuild.build.executor import open_executor

    executor = open_executor(store=store_dir, runtime=args.runtime, inputs=args.inputs,
                             keep_bundles=args.keep_bundle, timeout=args.timeout,
                             max_parallel=args.jobs or default_jobs(),
                             cache=not getattr(args, "no_cache", False), purge=False)

    join = _in_background(executor.runtime.unavailable_reason)
    try:
        import pytest_ocibuild.nix.build  # noqa: F401 - imported while Nix evaluates

        settings = settings_from_nix()
        if args.cores is not None:
            settings = dataclasses.replace(settings, cores=args.cores)  # type: ignore[type-var]
    except BaseException:
        with contextlib.suppress(Exception):
            join()
        raise
    return executor, settings, join


def _build(args: argparse.Namespace, executor: Any, settings: Any, state: Path,
           store_root: Path | str, drv_path: str) -> int:
    from pytest_ocibuild.nix.build import NixBuilder, print_progress, result_json

    builder = NixBuilder(executor, state, settings=settings,
                         progress=print_progress if sys.stderr.isatty() else None,
                         store_root=store_root)
    # What crashed runs left is purged while the first builds run (purge leaves everything of
    # live processes alone, this one's included), not before them: less on the way to a result.
    join_purge = _in_background(executor.purge)
    try:
        outputs = builder.build(drv_path)
    except BaseException:
        with contextlib.suppress(Exception):
            join_purge()
        raise
    join_purge()
    if args.export:
        from pytest_ocibuild.castore.ingest import export

        args.export.mkdir(parents=True, exist_ok=True)
        for info in outputs.values():
            dest = args.export / os.path.basename(info.path)
            if not os.path.lexists(dest):
                export(executor.store, info.node, dest)
    if args.json:
        print(json.dumps(result_json(drv_path, outputs)))
    else:
        for _, info in sorted(outputs.items()):
            print(info.path)
    return 0
