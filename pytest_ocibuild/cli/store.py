"""``ocibuild store`` (gc, df, verify, purge) and ``ocibuild cache`` (ls, rm)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_ocibuild.cli.build import BadUsage, kept_root
from pytest_ocibuild.cli.common import add_store, human, non_negative, parse_size, store_dir


def add_store_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``store`` and ``cache``."""
    st = sub.add_parser("store", help="store maintenance: gc, df, verify, purge",
                        description="Store maintenance (see docs/store.md).")
    ss = st.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    g = ss.add_parser("gc", help="drop results beyond the budgets, unreferenced objects and "
                      "kept bundles")
    g.add_argument("--max-age", type=non_negative, metavar="DAYS",
                   help="drop results not used for this many days (>= 0)")
    g.add_argument("--max-size", type=parse_size, metavar="SIZE",
                   help="keep the most recently used results within SIZE (e.g. 10G, 500M)")
    g.add_argument("--keep-failed", action="store_true", help="keep recorded failures")
    g.add_argument("--grace", type=non_negative, default=None, metavar="SECONDS",
                   help="never delete objects younger than this (default: 600)")
    g.set_defaults(handler=cmd_store_gc)
    d = ss.add_parser("df", help="objects, results, logs and caches with their sizes")
    d.set_defaults(handler=cmd_store_df)
    v = ss.add_parser("verify", help="re-hash every object; exit 1 listing corrupt ones")
    v.set_defaults(handler=cmd_store_verify)
    pg = ss.add_parser("purge", help="remove what crashed runs left behind")
    pg.add_argument("--bundles", type=Path, metavar="DIR",
                    help="bundle root (default: the per-user one)")
    pg.add_argument("--kept", action="store_true",
                    help="also remove the bundles kept by --keep-bundle")
    pg.set_defaults(handler=cmd_store_purge)
    for p in (g, d, v, pg):
        add_store(p)
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c = sub.add_parser("cache", help="persistent build caches (a request's 'caches')")
    cs = c.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    ls = cs.add_parser("ls", help="list caches")
    ls.set_defaults(handler=cmd_cache_ls)
    rm = cs.add_parser("rm", help="delete a cache (refused while a build uses it)")
    rm.add_argument("name", help="cache name, as 'cache ls' lists it")
    rm.set_defaults(handler=cmd_cache_rm)
    for p in (ls, rm):
        add_store(p)


def remove_kept() -> list[str]:
    """Remove the bundles ``--keep-bundle`` kept (not one holding a mount)."""
    from pytest_ocibuild.build.atomic import remove_tree
    from pytest_ocibuild.build.lifecycle import mounts_under

    root = kept_root()
    if not root.is_dir():
        return []
    gone = []
    for bundle in sorted(root.iterdir()):
        if not mounts_under(bundle):
            remove_tree(bundle)
            gone.append(str(bundle))
    return gone


def cmd_store_gc(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.gc import GRACE, gc
    from pytest_ocibuild.image.gc import image_gc

    root = store_dir(args)
    max_age = args.max_age * 86400 if args.max_age is not None else None
    grace = GRACE if args.grace is None else args.grace
    report = gc(root, max_age=max_age, max_size=args.max_size, keep_failed=args.keep_failed,
                grace=grace)
    # the image layer cache (ocibuild image) has the same age and its own size budget
    images = image_gc(root / "image", max_age=max_age, max_size=args.max_size, grace=grace)
    kept = remove_kept()
    if args.json:
        print(json.dumps({**report.to_dict(), "kept_bundles_removed": len(kept),
                          "image": images.to_dict()}, indent=2))
    else:
        print(f"kept {report.records_kept} results; removed {report.records_removed} results, "
              f"{report.blobs_removed} blobs, {report.dirs_removed} directories, "
              f"{report.logs_removed} logs, {len(kept)} kept bundles, "
              f"{images.records_removed} image layers; "
              f"freed {human(report.bytes_freed + images.bytes_freed)}")
    return 0


def cmd_store_df(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.gc import df
    from pytest_ocibuild.image.gc import image_df

    root = store_dir(args)
    usage = df(root)
    total = usage.pop("total")
    for kind, v in image_df(root / "image").items():  # the layer cache of ocibuild image
        usage[kind] = v
        total = {"count": total["count"] + v["count"], "bytes": total["bytes"] + v["bytes"]}
    usage["total"] = total
    if args.json:
        print(json.dumps(usage, indent=2))
        return 0
    for kind, v in usage.items():
        print(f"{kind:<16}{v['count']:>10}  {human(v['bytes']):>12}")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.gc import verify

    report = verify(store_dir(args))
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
    from pytest_ocibuild.build.lifecycle import purge, purge_cgroups, purge_containers
    from pytest_ocibuild.build.locations import bundle_root
    from pytest_ocibuild.build.runtime import purgeable_runtimes

    if args.bundles is not None and not args.bundles.is_dir():
        raise BadUsage(f"--bundles {args.bundles}: not a directory")
    runtimes = purgeable_runtimes()  # the containers first, then their mounts and bundles
    containers = [cid for runtime in runtimes for cid in purge_containers(runtime)]
    report = purge(store_root=store_dir(args), bundle_root=args.bundles or bundle_root()
                   ).to_dict()
    report["containers"] = containers
    report["cgroups"] = purge_cgroups()
    if args.kept:
        report["kept"] = remove_kept()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(", ".join(f"{len(v)} {k}" for k, v in report.items()) + " removed")
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.caches import CacheStore

    root = store_dir(args)
    caches = CacheStore(root).ls()
    if not caches:
        print(f"no caches in {root}", file=sys.stderr)
    for info in caches:
        use = "  (in use)" if info.in_use else ""
        print(f"{info.name}\tgeneration {info.generation}\t{human(info.size)}{use}")
    return 0


def cmd_cache_rm(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.caches import CacheStore

    if not CacheStore(store_dir(args)).delete(args.name):
        raise BadUsage(f"no cache {args.name!r} (see 'ocibuild cache ls')")
    return 0
