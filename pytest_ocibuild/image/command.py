"""``ocibuild image``: build a target (or use its recorded result) and write an OCI image.

    ocibuild image --out DIR [--max-layers N] [--tag T] [--cmd CMD] [--env K=V]...
                   [--docker-archive FILE] [--popularity FILE]
                   (REQUEST.yaml | FILE.nix [-A ATTR] [--arg N E] [--argstr N S] | DRV)

For a Nix target the image holds the whole runtime closure under ``/nix/store``, layered as
Nixery does; popularity comes from ``--popularity`` (Nixery's JSON) or else is counted from
the closures built in the store.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from pytest_ocibuild.errors import InvalidRequest, OcibuildError
from pytest_ocibuild.image.layering import DEFAULT_BUDGET, MAX_LAYERS


def add_image(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
              executor_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``image`` on the ``ocibuild`` sub-parsers."""
    p = sub.add_parser("image", help="write an OCI image of a build's outputs or a Nix closure",
                       description=__doc__.splitlines()[0])
    p.add_argument("target", help="a request file, a .nix file or a /nix/store/….drv")
    p.add_argument("--out", type=Path, help="OCI image layout directory to write")
    p.add_argument("--max-layers", type=int, default=DEFAULT_BUDGET, metavar="N",
                   help=f"layer budget (default {DEFAULT_BUDGET}, at most {MAX_LAYERS})")
    p.add_argument("--tag", default="latest", help="ref name in index.json (default: latest)")
    p.add_argument("--cmd", help="the image's Cmd, split like a shell command line "
                   "(or a JSON array)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="an Env entry of the image (repeatable)")
    p.add_argument("--docker-archive", type=Path, metavar="FILE",
                   help="also write a `docker load` tar")
    p.add_argument("--popularity", type=Path, metavar="FILE",
                   help="Nixery popularity JSON (store path name -> count)")
    p.add_argument("-A", "--attr", dest="attr", help="attribute of the .nix file")
    p.add_argument("--arg", nargs=2, action="append", default=[], metavar=("NAME", "EXPR"),
                   help="pass the Nix expression EXPR as argument NAME (repeatable)")
    p.add_argument("--argstr", nargs=2, action="append", default=[], metavar=("NAME", "STR"),
                   help="pass the string STR as argument NAME (repeatable)")
    executor_args(p)
    p.set_defaults(handler=cmd_image)


def parse_cmd(text: str | None) -> list[str]:
    if not text:
        return []
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise InvalidRequest(f"--cmd: not a JSON array: {e}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest("--cmd: expected a JSON array of strings")
        return value
    try:
        return shlex.split(text)
    except ValueError as e:
        raise InvalidRequest(f"--cmd: {e}") from None


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad combinations with one line (exit 2)."""
    if args.out is None and args.docker_archive is None:
        raise InvalidRequest("image: give --out DIR (and/or --docker-archive FILE)")
    if not 1 <= args.max_layers <= MAX_LAYERS:
        raise InvalidRequest(f"--max-layers: {args.max_layers} is not in 1..{MAX_LAYERS}")
    for e in args.env:
        if "=" not in e or e.startswith("="):
            raise InvalidRequest(f"--env: '{e}' is not K=V")
    if not Path(args.target).exists() and not args.target.startswith("/nix/store/"):
        raise InvalidRequest(f"{args.target}: no such file or directory")


def cmd_image(args: argparse.Namespace) -> int:
    from pytest_ocibuild.build.locations import default_store_dir
    from pytest_ocibuild.image.export import Options, export_image, layer_cache
    from pytest_ocibuild.image.popularity import load_popularity, store_popularity
    from pytest_ocibuild.image.targets import is_nix_target, nix_target, request_target

    check_args(args)
    cmd = parse_cmd(args.cmd)
    store_dir = Path(args.store) if args.store else default_store_dir()
    args.store = store_dir
    nix = is_nix_target(args.target)
    if not nix and (args.attr or args.arg or args.argstr):
        raise InvalidRequest("-A, --arg and --argstr apply to .nix files")
    target = nix_target(args, store_dir) if nix else request_target(args)
    popularity = (load_popularity(args.popularity) if args.popularity
                  else store_popularity(store_dir) if nix else {})
    opts = Options(tag=args.tag, max_layers=args.max_layers, cmd=cmd, env=args.env,
                   popularity=popularity, docker_archive=args.docker_archive,
                   repo=target.name)
    try:
        done = export_image(layer_cache(target.store, store_dir), target.items, target.roots,
                            args.out, opts)
    except ValueError as e:  # a reference cycle or a dangling reference
        raise OcibuildError(f"image: {e}", reason="bad-closure") from None
    size = sum(w.size for w in done.image.layers)
    if args.json:
        print(json.dumps({
            "manifest": f"sha256:{done.image.manifest}", "config": f"sha256:{done.image.config}",
            "tag": args.tag, "seconds": round(done.seconds, 3), "made": done.made,
            "layers": [{"digest": f"sha256:{w.digest}", "size": w.size,
                        "diffId": f"sha256:{w.diff_id}", "paths": list(lay.contents)}
                       for w, lay in zip(done.image.layers, done.layers, strict=True)],
        }, indent=2))
    else:
        where = args.out or args.docker_archive
        print(f"{where}:{args.tag} sha256:{done.image.manifest}")
        print(f"{len(done.layers)} layers ({done.made} made, {len(done.layers) - done.made} "
              f"cached) for {len(target.items)} paths, {size / 1048576:.1f} MiB compressed, "
              f"in {done.seconds:.2f}s", file=sys.stderr)
    return 0
