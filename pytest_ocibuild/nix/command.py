"""``ocibuild nix-build``: the sub-command's arguments and handler (registered by ``cli``).

    ocibuild nix-build [--store DIR] [--json] [--export DIR] [-o LINK] [--dry-run] [--check]
                       [--option NAME VALUE]... [-j N] [--cores N] [-k] [-K] [-Q] ...
                       (DRV | FILE.nix [-A ATTR] [--arg N EXPR] [--argstr N S])

Nix's settings (``--option``) are read by ``options``; one we cannot honour is refused.

With ``--json`` stdout is one object ``{"drvPath", "outputs": {name: {"path", "narHash",
"narSize", "references"}}}``; otherwise the output paths, one a line, like ``nix-build``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_ocibuild.build.locations import default_store_dir
from pytest_ocibuild.build.store_dir import usable_store_dir
from pytest_ocibuild.errors import NixError
from pytest_ocibuild.nix.options import ALIASES, BOOL_KINDS, SETTINGS, NixOptions


def add_nix_build(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                  executor_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``nix-build`` on the ``ocibuild`` sub-parsers (options grouped as in
    nix-build's manual: its own, then the common ones; then ocibuild's)."""
    p = sub.add_parser("nix-build", help="build a Nix derivation in the OCI sandbox",
                       description="Build a Nix derivation as nix-build does, in the OCI "
                       "sandbox; nothing is written to /nix/store.")
    p.add_argument("target", help="a /nix/store/….drv path or a .nix file")
    own = p.add_argument_group("nix-build options")
    own.add_argument("--no-out-link", action="store_true",
                     help="do not create a symlink to the output (the default here)")
    own.add_argument("--dry-run", action="store_true",
                     help="show what derivations would be built, build nothing")
    own.add_argument("-o", "--out-link", metavar="OUTLINK",
                     help="symlink OUTLINK (OUTLINK-<output> for other outputs) to the "
                     "exported output")
    common = p.add_argument_group("common options")
    common.add_argument("--quiet", action="store_true", help="no progress lines")
    common.add_argument("-Q", "--no-build-output", action="store_true",
                        help="no progress lines (a failure still shows its log tail)")
    common.add_argument("-L", "--print-build-logs", action=argparse.BooleanOptionalAction,
                        default=None, help="show the builds' logs on stderr as they run, "
                        "each line after 'NAME> ' (default: for a single build on a terminal)")
    common.add_argument("-j", "--max-jobs", "--jobs", dest="jobs", metavar="N",
                        help="derivations built at once, or 'auto' (default: twice the CPUs, "
                        "since a small build spends much of its time waiting on runc)")
    common.add_argument("--cores", type=int, help="NIX_BUILD_CORES (default: Nix's cores)")
    common.add_argument("--max-silent-time", type=int, metavar="SECONDS",
                        help="kill a build silent for this long")
    common.add_argument("-k", "--keep-going", action="store_true",
                        help="keep building what does not depend on a failed derivation")
    common.add_argument("-K", "--keep-failed", action="store_true",
                        help="keep a failed build's directory and print its path")
    common.add_argument("--check", action="store_true",
                        help="build again and compare with the recorded outputs")
    common.add_argument("--show-trace", action="store_true", help="passed to evaluation")
    common.add_argument("-A", "--attr", dest="attr", help="attribute of the .nix file to build")
    common.add_argument("--arg", nargs=2, action="append", default=[],
                        metavar=("NAME", "EXPR"),
                        help="pass the Nix expression EXPR as argument NAME of the file's "
                        "function (repeatable)")
    common.add_argument("--argstr", nargs=2, action="append", default=[],
                        metavar=("NAME", "STR"),
                        help="pass the string STR as argument NAME (repeatable)")
    common.add_argument("--option", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a Nix setting: " + ", ".join(
                            sorted(n for n in SETTINGS if n != "experimental-features")))
    common.add_argument("--experimental-features", metavar="FEATURES",
                        help="Nix's experimental-features setting (e.g. ca-derivations)")
    common.add_argument("--extra-experimental-features", action="append", default=[],
                        metavar="FEATURES", help="added to experimental-features (repeatable)")
    mine = p.add_argument_group("ocibuild options")
    mine.add_argument("--export", type=Path, help="materialise the outputs under this directory")
    mine.add_argument("--events", action="store_true", help="write the builds' events as "
                      "JSON lines on stdout, each with its derivation's name (docs/events.md)")
    executor_args(mine)  # type: ignore[arg-type]
    _refuse_unknown(p)
    p.set_defaults(handler=cmd_nix_build)


def _refuse_unknown(p: argparse.ArgumentParser) -> None:
    """One line naming the first option we do not take (exit 2), not argparse's usage text."""
    parse = p.parse_known_args

    def error(message: str) -> None:  # type: ignore[misc]
        print(f"ocibuild nix-build: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        ns, extra = parse(settings_as_options(list(args or []), p._option_string_actions),
                          namespace)
        if extra:
            what = next((a for a in extra if a.startswith("-")), extra[0])
            error(f"unrecognized option '{what}' (not supported by ocibuild nix-build)"
                  if what.startswith("-") else f"unexpected argument '{what}'")
        return ns, extra

    p.error = error  # type: ignore[method-assign,assignment]
    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def settings_as_options(argv: list[str], defined: Mapping[str, object]) -> list[str]:
    """Nix takes every setting as ``--NAME VALUE`` too (``--no-NAME``/``--NAME`` for Boolean
    ones): such arguments become ``--option NAME VALUE`` (before ``--``, not for options of
    ours)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            return out + argv[i - 1:]
        name = a[2:] if a.startswith("--") and a not in defined else ""
        base = ALIASES.get(name, name)
        base = base if base in SETTINGS else ALIASES.get(base[6:], base[6:])
        flag = name.removeprefix("no-")
        if base in SETTINGS and SETTINGS[base] not in BOOL_KINDS and i < len(argv):
            out += ["--option", name, argv[i]]
            i += 1
        elif SETTINGS.get(ALIASES.get(flag, flag)) in BOOL_KINDS:
            out += ["--option", flag, "false" if name.startswith("no-") else "true"]
        else:
            out.append(a)
    return out


def nix_options(args: argparse.Namespace) -> NixOptions:
    """The settings given: ``--option``s in order, then the options that stand for them."""
    opts = NixOptions()
    for name, value in args.option:
        opts.set(name, value)
    if args.experimental_features is not None:
        opts.set("experimental-features", args.experimental_features)
    for value in args.extra_experimental_features:
        opts.set("extra-experimental-features", value)
    for name, value in (("cores", args.cores), ("max-jobs", args.jobs),
                        ("max-silent-time", args.max_silent_time)):
        if value is not None:
            opts.set(name, str(value))
    if args.timeout is not None:
        opts.timeout = args.timeout
    opts.keep_going |= args.keep_going
    opts.keep_failed |= args.keep_failed
    opts.show_trace |= args.show_trace
    if opts.max_jobs == 0:
        raise NixError("max-jobs 0: nothing can be built (there are no remote builders)")
    return opts


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


def resolve_target(args: argparse.Namespace, state: Path, nix_args: list[str] | None = None,
                   ) -> tuple[Callable[[], str], Path | str]:
    """``(wait, store_root)``: ``wait()`` gives the .drv path to build (for a .nix file,
    ``nix-instantiate`` is already running when this returns) and ``store_root`` the store
    the .drv files are read from. ``nix_args``: more options for nix-instantiate."""
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
                             argstrs=dict(args.argstr), store_root=store_root,
                             options=nix_args or []), store_root


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
    opts = nix_options(args)  # a refused option fails before anything runs
    opts.say_ignored()
    store_dir = usable_store_dir(args.store or default_store_dir())
    state = store_dir / "nix"  # eval store, sources, results: shared with the pytest plugin
    wait_drv, store_root = resolve_target(args, state, opts.nix_args())
    try:
        executor, settings, join = _prepare(args, opts, store_dir)
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
    return _build(args, opts, executor, settings, state, store_root, drv_path)


def _prepare(args: argparse.Namespace, opts: NixOptions, store_dir: Path,
             ) -> tuple[Any, Any, Callable[[], None]]:
    """The executor, the Nix settings, and a join for the check that runc works (remembered
    by the runtime), which runs in a thread meanwhile."""
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.build.limits import Limits

    executor = open_executor(store=store_dir, runtime=args.runtime, inputs=args.inputs,
                             keep_bundles=args.keep_bundle or opts.keep_failed,
                             timeout=opts.timeout or None,
                             max_parallel=opts.max_jobs or default_jobs(),
                             cache=not getattr(args, "no_cache", False), purge=False,
                             limits=Limits.from_options(args))

    join = _in_background(executor.runtime.unavailable_reason)
    try:
        import pytest_ocibuild.nix.build  # noqa: F401 - imported while Nix evaluates
        from pytest_ocibuild.nix.evaluate import nix_settings

        settings = opts.apply(settings_from_nix(), nix_settings())
        if opts.max_silent_time:
            import dataclasses

            settings = dataclasses.replace(settings,  # type: ignore[type-var]
                                           max_silent_time=opts.max_silent_time)
    except BaseException:
        with contextlib.suppress(Exception):
            join()
        raise
    return executor, settings, join


def _build(args: argparse.Namespace, opts: NixOptions, executor: Any, settings: Any,
           state: Path, store_root: Path | str, drv_path: str) -> int:
    from pytest_ocibuild.nix.build import NixBuilder, print_progress, result_json

    if args.events and args.json:
        raise NixError("--events and --json both write stdout: choose one")
    quiet = args.quiet or args.no_build_output or not sys.stderr.isatty()
    builder = NixBuilder(executor, state, settings=settings,
                         progress=None if quiet else print_progress,
                         store_root=store_root, keep_going=opts.keep_going,
                         keep_failed=opts.keep_failed and not args.keep_bundle,
                         listen=_listen(args))
    if args.dry_run:
        print_progress(builder.dry_run(drv_path))
        return 0
    # What crashed runs left is purged while the first builds run (purge leaves everything of
    # live processes alone, this one's included), not before them: less on the way to a result.
    join_purge = _in_background(executor.purge)
    try:
        outputs = builder.check(drv_path) if args.check else builder.build(drv_path)
    except BaseException:
        with contextlib.suppress(Exception):
            join_purge()
        raise
    finally:
        if args.keep_bundle:
            report_kept(executor)
    join_purge()
    if args.export or args.out_link:
        from pytest_ocibuild.castore.trees import export

        where = args.export or state / "exported"
        where.mkdir(parents=True, exist_ok=True)
        for name, info in sorted(outputs.items()):
            dest = where / os.path.basename(info.path)
            if not os.path.lexists(dest):
                export(executor.store, info.node, dest)
            if args.out_link and not args.no_out_link:
                link = args.out_link if name == "out" else f"{args.out_link}-{name}"
                _replace_symlink(os.path.abspath(dest), link)
    if args.events:  # stdout holds the events only
        return 0
    if args.json:
        print(json.dumps(result_json(drv_path, outputs)))
    else:
        for _, info in sorted(outputs.items()):
            print(info.path)
    return 0


def _listen(args: argparse.Namespace) -> Callable[[str, int], Any] | None:
    """NixBuilder's ``listen``: events on stdout (``--events``), logs on stderr (``-L``, by
    default for a single build on a terminal without ``-Q``), each labelled with the
    derivation's name."""
    from pytest_ocibuild.build.events import Live

    show = args.print_build_logs
    if show is None and (args.no_build_output or args.quiet or args.json or args.events
                         or not sys.stderr.isatty()):
        show = False
    if not args.events and show is False:
        return None
    logs, quiet = Live(events=sys.stdout if args.events else None, logs=sys.stderr.buffer,
                       prefix=True), Live(events=sys.stdout if args.events else None)

    def listen(drv_path: str, builds: int) -> Any:
        name = os.path.basename(drv_path)[33:].removesuffix(".drv")
        return (logs if show or (show is None and builds == 1) else quiet).listener(name)

    return listen


def _replace_symlink(target: str, link: str) -> None:
    """Point ``link`` at ``target`` (an existing symlink is replaced, anything else is not)."""
    if os.path.lexists(link) and not os.path.islink(link):
        raise NixError(f"--out-link: '{link}' exists and is not a symlink")
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def kept_root() -> Path:
    """Where ``--keep-bundle`` puts kept bundles: beside the per-user bundle root, out of the
    reach of start-up purges; ``ocibuild store purge --kept`` and ``store gc`` remove them."""
    from pytest_ocibuild.build.locations import user_dir

    return user_dir() / "kept"


def report_kept(executor: Any, digest_hex: str = "") -> list[Path]:
    """Move this process's bundles (of the request with ``digest_hex``, else all) out of the
    purge's way (not one holding a mount) and print where each is."""
    from pytest_ocibuild.build.lifecycle import mounts_under

    found = sorted(Path(executor.bundle_root).glob(
        f"ocibuild-{os.getpid()}-*-{digest_hex[:12]}" if digest_hex else
        f"ocibuild-{os.getpid()}-*"))
    if not found:
        print("ocibuild: no bundle kept: every result was recorded before (add --no-cache to "
              "build again)", file=sys.stderr)
    kept = []
    for bundle in found:
        dest = bundle
        if not mounts_under(bundle):
            with contextlib.suppress(OSError):
                kept_root().mkdir(mode=0o711, exist_ok=True)
                os.rename(bundle, kept_root() / bundle.name)
                dest = kept_root() / bundle.name
        print(f"ocibuild: kept bundle: {dest}", file=sys.stderr)
        kept.append(dest)
    return kept
