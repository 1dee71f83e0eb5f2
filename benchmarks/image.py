"""``ocibuild image`` export against a plain one-layer tar of the same tree.

Run from the repository root (as root, with Nix and runc)::

    .venv/bin/python benchmarks/image.py [--runs 5] [--attr trees.large ...]

Builds each ``--attr`` of ``nix/default.nix`` (default: the corpus attributes with the
largest outputs or closures) with our Nix builder into a fresh store, and takes the one whose
runtime closure has the most NAR bytes: that is the largest closure of ``nix/``. Then, ``--runs``
times each, interleaved, in the same run:

* ``ours cold``: ``export_image`` into an empty layer cache (layering, gzip layers made,
  layout written);
* ``ours warm``: the same export again with the cache kept (every layer found);
* ``tar``: GNU ``tar -cf`` of the closure materialised on disk as ``nix/store/...``;
* ``tar.gz``: ``tar -czf`` (gzip -6, as our layers) of the same tree.

Prints the medians, the image's size (every blob of the layout) against the two tars', and
the ratios ours/tar. Materialising the tree is not timed (the store's export is the input).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "nix" / "default.nix"
CANDIDATES = ["trees.large", "trees.many", "deps.at-boundaries", "deps.on-sources",
              "deps.on-multi-dev", "graph.top"]


def build(store_dir: Path, bbdir: Path, attrs: list[str]) -> dict[str, tuple[dict, list[str]]]:
    """Each attr's runtime closure as image items, and its top-level paths."""
    from pytest_ocibuild.build.executor import open_executor
    from pytest_ocibuild.image.targets import runtime_closure
    from pytest_ocibuild.nix.build import NixBuilder
    from pytest_ocibuild.nix.evaluate import instantiate
    from pytest_ocibuild.nix.to_request import NixSettings

    evs = store_dir.parent / "eval"
    builder = NixBuilder(open_executor(store=store_dir, max_parallel=2), store_dir / "nix",
                         settings=NixSettings(cores=2), store_root=evs)
    out = {}
    for attr in attrs:
        drv = instantiate(CORPUS, attr=attr, args={"bbdir": str(bbdir)}, store_root=evs)
        roots = sorted(i.path for i in builder.build(drv).values())
        out[attr] = (runtime_closure(builder, drv, roots), roots)
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--attr", action="append", help="candidate attribute (repeatable)")
    ap.add_argument("--max-layers", type=int, default=94)
    args = ap.parse_args()
    from pytest_ocibuild.castore.local import LocalStore
    from pytest_ocibuild.castore.trees import export
    from pytest_ocibuild.image.export import Options, export_image, layer_cache

    work = Path(tempfile.mkdtemp(prefix="ocibuild-bench-image-"))
    try:
        bbdir = work / "bb"
        bbdir.mkdir()
        shutil.copy2("/bin/busybox", bbdir / "busybox")
        store_dir = work / "store"
        closures = build(store_dir, bbdir, args.attr or CANDIDATES)
        print("candidates (closure paths, NAR bytes):")
        for attr, (items, _r) in closures.items():
            print(f"  {attr:24} {len(items):3} paths {sum(i.size for i in items.values()):>11,}")
        attr = max(closures, key=lambda a: sum(i.size for i in closures[a][0].values()))
        items, roots = closures[attr]
        store = LocalStore(store_dir)
        tree = work / "tree"
        for p, item in items.items():
            dest = tree / p.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            export(store, item.node, dest)
        opts = Options(max_layers=args.max_layers)
        times: dict[str, list[float]] = {k: [] for k in ("ours cold", "ours warm", "tar",
                                                        "tar.gz")}
        sizes: dict[str, int] = {}
        layers = made = 0
        for run in range(args.runs):
            cache_dir = work / f"cache{run}"
            out = work / f"oci{run}"

            def cold(cache_dir: Path = cache_dir, out: Path = out) -> None:
                nonlocal layers, made
                done = export_image(layer_cache(store, cache_dir), items, roots, out, opts)
                layers, made = len(done.layers), done.made

            def warm(cache_dir: Path = cache_dir, out: Path = out) -> None:
                export_image(layer_cache(store, cache_dir), items, roots,
                             out.with_name(out.name + "w"), opts)

            def tar(z: bool, run: int = run) -> None:
                dest = work / f"plain{run}.tar{'.gz' if z else ''}"
                gz = ["--use-compress-program", "gzip -6"] if z else []
                subprocess.run(["tar", "-C", str(tree), "--sort=name", *gz, "-cf", str(dest),
                                "nix"], check=True)
                sizes["tar.gz" if z else "tar"] = dest.stat().st_size

            steps = [("ours cold", cold), ("ours warm", warm), ("tar", lambda: tar(False)),
                     ("tar.gz", lambda: tar(True))]
            for name, fn in (steps if run % 2 == 0 else steps[2:] + steps[:2]):
                times[name].append(timed(fn))
            sizes["image"] = du(out)
            assert made == layers, "a cold export found a layer cached"
        med = {k: statistics.median(v) for k, v in times.items()}
        nar = sum(i.size for i in items.values())
        print(f"\n{attr}: {len(items)} paths, {nar:,} NAR bytes, {layers} layers, "
              f"{args.runs} runs (medians)")
        for k, v in med.items():
            print(f"  {k:10} {v * 1000:9.1f} ms")
        print(f"  image     {sizes['image']:>12,} bytes (all blobs of the layout)")
        print(f"  tar       {sizes['tar']:>12,} bytes")
        print(f"  tar.gz    {sizes['tar.gz']:>12,} bytes")
        print("ratios (ours / tar, ours / tar.gz):")
        print(f"  time cold {med['ours cold'] / med['tar']:.2f}  "
              f"{med['ours cold'] / med['tar.gz']:.2f}")
        print(f"  time warm {med['ours warm'] / med['tar']:.2f}  "
              f"{med['ours warm'] / med['tar.gz']:.2f}")
        print(f"  size      {sizes['image'] / sizes['tar']:.3f} "
              f"{sizes['image'] / sizes['tar.gz']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
